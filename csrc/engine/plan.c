/* plan.c - validate one rank's packed schedule once, so execution trusts it. */
#include <stdlib.h>
#include <string.h>

#include "cx_engine.h"

cx_status cx_plan_create(const void *steps, size_t steps_len, const void *deps, size_t deps_len,
                         size_t scratch_bytes, int world_size, int self, cx_plan **out)
{
    if (steps_len % sizeof(cx_step) || deps_len % sizeof(int32_t))
        return CX_ERROR(CX_ERR_INVALID, -1, "plan: packed steps (%zu B) or deps (%zu B) are "
                        "not whole records", steps_len, deps_len);
    int n = (int)(steps_len / sizeof(cx_step));
    int nd = (int)(deps_len / sizeof(int32_t));
    cx_plan *p = calloc(1, sizeof *p);
    if (!p)
        return CX_ERROR(CX_ERR_NOMEM, -1, "plan: out of memory");
    p->nsteps = n;
    p->scratch_bytes = scratch_bytes;
    p->steps = malloc(n ? steps_len : 1);
    p->deps = malloc(nd ? deps_len : 1);
    p->chan_prev = malloc(sizeof(int32_t) * (n ? n : 1));
    /* last step index per (peer, direction) while scanning: 2 * world_size slots */
    int32_t *last = malloc(sizeof(int32_t) * 2 * (world_size > 0 ? world_size : 1));
    if (!p->steps || !p->deps || !p->chan_prev || !last) {
        free(last);
        cx_plan_destroy(p);
        return CX_ERROR(CX_ERR_NOMEM, -1, "plan: out of memory");
    }
    memcpy(p->steps, steps, steps_len);
    memcpy(p->deps, deps, deps_len);
    for (int i = 0; i < 2 * world_size; i++)
        last[i] = -1;
    cx_status st = CX_OK;
    for (int i = 0; i < n && st == CX_OK; i++) {
        const cx_step *s = &p->steps[i];
        size_t end;
        if (s->kind >= CX_NSTEP_KINDS || s->buf >= CX_NBUFS || s->src_buf >= CX_NBUFS ||
            s->ndeps < 0 || s->dep_start < 0 || s->dep_start + s->ndeps > nd) {
            st = CX_ERROR(CX_ERR_INVALID, -1, "plan: step %d is malformed", i);
            break;
        }
        for (int k = 0; k < s->ndeps; k++) {
            int32_t d = p->deps[s->dep_start + k];
            if (d < 0 || d >= i) {
                st = CX_ERROR(CX_ERR_INVALID, -1, "plan: step %d depends on step %d, which "
                              "does not precede it", i, d);
                break;
            }
        }
        end = s->off + s->nbytes;
        if (end > p->need[s->buf])
            p->need[s->buf] = end;
        if (s->kind == CX_STEP_RECV_REDUCE || s->kind == CX_STEP_COPY) {
            end = s->src_off + s->nbytes;
            if (end > p->need[s->src_buf])
                p->need[s->src_buf] = end;
        }
        if (s->kind == CX_STEP_RECV_REDUCE)
            p->reduces = 1;
        p->chan_prev[i] = -1;
        if (s->kind != CX_STEP_COPY) {
            if (s->peer < 0 || s->peer >= world_size || s->peer == self) {
                st = CX_ERROR(CX_ERR_INVALID, -1, "plan: step %d names peer %d (self %d, "
                              "world %d)", i, s->peer, self, world_size);
                break;
            }
            int slot = 2 * s->peer + (s->kind == CX_STEP_SEND);
            p->chan_prev[i] = last[slot];
            last[slot] = i;
        }
    }
    free(last);
    if (p->need[CX_BUF_SCRATCH] > scratch_bytes && st == CX_OK)
        st = CX_ERROR(CX_ERR_INVALID, -1, "plan: steps touch %zu scratch bytes, plan has %zu",
                      (size_t)p->need[CX_BUF_SCRATCH], scratch_bytes);
    if (st != CX_OK) {
        cx_plan_destroy(p);
        return st;
    }
    *out = p;
    return CX_OK;
}

void cx_plan_destroy(cx_plan *p)
{
    if (!p)
        return;
    free(p->steps);
    free(p->deps);
    free(p->chan_prev);
    free(p);
}

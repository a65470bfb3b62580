"""The packed layout of a batch of sequences ("packing" of sequences only: the weights'
GEMM-panel layout is "prepacked weights", `clstm._packed.PackedWeights`)."""
import functools

import numpy as np


def packing(T, B, lengths=None):
    """``Packing(T, B, lengths)``; one shared object per (T, B) without lengths (nothing
    changes a Packing, and a short call feels the 1 µs of making one)."""
    return _plain(T, B) if lengths is None else Packing(T, B, lengths)


@functools.lru_cache(maxsize=256)
def _plain(T, B):
    return Packing(T, B)


@functools.lru_cache(maxsize=256)
def _even_bounds(B, n):
    """[0, B/n, 2B/n, ..., B] (n >= 1 parts; read-only, shared between calls)."""
    bounds = (np.arange(n + 1) * B // n).astype(np.intp)
    bounds.flags.writeable = False
    return bounds


class Packing:
    """The packed layout of a (T, B, .) batch whose row b has ``lengths[b]`` real steps.

    Rows are sorted by length, longest first (``order[j]`` is the original row at sorted
    position j), and only real steps are stored, step-major: step t is rows
    ``[offsets[t], offsets[t+1])`` of an (N, .) array, holding the sorted rows still running.
    With no lengths (or all equal to T) this is the plain layout: packing is a reshape and
    ``offsets`` is None (the kernels then compute t*B, so nothing here grows with T).
    """

    def __init__(self, T, B, lengths=None):
        self.T, self.B = T, B
        self.uniform = lengths is None or bool(np.all(lengths == T))
        if self.uniform:
            self.order = None
            self.sorted_lengths = np.full(B, T, np.intp)
            self.offsets = None
            self.steps, self.n_rows, self.first_step_rows = T, T * B, B
            return
        self.order = np.argsort(-lengths, kind="stable")
        lengths = self.sorted_lengths = lengths[self.order].astype(np.intp)
        steps = int(lengths[0]) if B else 0
        # rows still running at step t: the sorted lengths greater than t
        batch_sizes = np.searchsorted(-lengths, -np.arange(steps), side="left")
        self.offsets = np.concatenate([[0], np.cumsum(batch_sizes)]).astype(np.intp)
        self.steps, self.n_rows = steps, int(self.offsets[-1])
        self.first_step_rows = int(batch_sizes[0]) if steps else 0
        t = np.repeat(np.arange(steps), batch_sizes)
        j = np.arange(self.offsets[-1]) - self.offsets[t]
        self._src = t * B + self.order[j]                    # packed row -> padded row
        self._rev = self.offsets[lengths[j] - 1 - t] + j     # (t, j) <-> (len_j - 1 - t, j)

    def pack(self, a):
        """(T, B, F) -> (N, F)."""
        flat = a.reshape(self.T * self.B, a.shape[-1])
        return flat if self.uniform else flat[self._src]

    def unpack(self, p):
        """(N, F) -> (T, B, F), zeros past each row's length."""
        if self.uniform:
            return p.reshape(self.T, self.B, p.shape[-1])
        out = np.zeros((self.T * self.B, p.shape[-1]), p.dtype)
        out[self._src] = p
        return out.reshape(self.T, self.B, p.shape[-1])

    def reverse(self, p, out=None):
        """Each row's steps in reverse order (into ``out``, else a new array): the reverse
        direction's view."""
        if out is None:
            out = np.empty(p.shape, p.dtype)
        if self.uniform:  # (splitting the row axis of a row-strided view is still a view;
            # the feature count is spelled out, since -1 is ambiguous for an empty array)
            shape = (self.T, self.B, p.shape[-1])
            np.copyto(out.reshape(shape), p.reshape(shape)[::-1])
        else:
            np.take(p, self._rev, axis=0, out=out)
        return out

    def sort_rows(self, s):
        """(..., B, F) states in sorted row order (a new C-contiguous array)."""
        return s.copy() if self.uniform else np.ascontiguousarray(s[..., self.order, :])

    def unsort_rows(self, s):
        if self.uniform:
            return s
        out = np.empty_like(s)
        out[..., self.order, :] = s
        return out

    def batch_bounds(self, n_parts):
        """Row slice bounds for the "batch" work split: at most ``n_parts`` slices,
        contiguous in sorted order, cut where each has an equal share of the steps."""
        if self.uniform:
            return _even_bounds(self.B, max(1, min(n_parts, self.B)))
        n = min(n_parts, int(np.count_nonzero(self.sorted_lengths)))
        if n <= 1:
            return _even_bounds(self.B, 1)
        work = np.cumsum(self.sorted_lengths)
        cuts = np.searchsorted(work, work[-1] * np.arange(1, n) / n, side="left") + 1
        return np.concatenate([[0], np.minimum(cuts, self.B), [self.B]]).astype(np.intp)

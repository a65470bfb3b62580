"""Named parameters and their gradients, shared by every layer class."""
import zipfile
from collections.abc import Mapping

import numpy as np

from ._checks import check_shape, float_array


# Random initial values are drawn this many at a time (in float64, as NumPy draws them).
_DRAW_CHUNK = 1 << 20


def random_array(draw, shape, dtype):
    """A new array of ``shape`` and ``dtype`` filled with ``draw(n)`` (NumPy's float64
    draws: ``rng.uniform(-b, b, n)``...) a chunk at a time: the numbers one draw of the
    whole size gives, without its float64 temporary (which tripled the peak memory of a
    float32 model's initialisation and made an impossible size report the wrong dtype)."""
    out = np.empty(shape, dtype)
    flat = out.reshape(-1)
    for start in range(0, flat.size, _DRAW_CHUNK):
        flat[start:start + _DRAW_CHUNK] = draw(min(_DRAW_CHUNK, flat.size - start))
    return out


class Gradients(dict):
    """A module's ``grads``: parameter name -> the array its backward adds into and its
    optimisers read. Assigning an entry copies the value into that array (checked against
    its shape, cast to its dtype), as assigning a parameter does, so an optimiser built
    before sees the new values and a wrong shape is an error, not a silent broadcast. A
    name that is not there yet is stored as given."""

    def __setitem__(self, name, value):
        target = self.get(name)
        if target is None or value is target:  # (``grads[k] += d`` assigns target itself)
            super().__setitem__(name, value)
            return
        what = f"grads[{name!r}]"
        target[...] = check_shape(what, float_array(what, value, target.dtype), target.shape)

    def update(self, *args, **kwargs):
        for name, value in dict(*args, **kwargs).items():
            self[name] = value


def read_npz(path, what):
    """Every array of the ``.npz`` archive at ``path`` (no pickles), by name; anything else
    is a ValueError saying the file is not ``what``."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("found a single .npy array")
        with archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not {what} ({exc})") from None


class Parameterised:
    """Parameters in a dict of named float arrays (PyTorch names), gradients of the same
    shapes in ``grads`` (a `Gradients`), attribute access (``layer.weight_ih_l0``), and
    ``state_dict`` / ``load_state_dict``, and ``save`` / ``load`` to one ``.npz`` file.

    Subclasses set ``dtype`` and call ``_init_params``; the hyper-parameters named in
    ``_fixed`` cannot be assigned once set (the parameters' shapes and dtype follow them).
    """

    _fixed = ()

    def _init_params(self, shapes, rng, bound):
        """``shapes``: ordered name -> shape. PyTorch's initialisation: every parameter
        U(-bound, bound), drawn in state_dict order."""
        self._shapes = dict(shapes)
        self._params = {name: random_array(lambda n: rng.uniform(-bound, bound, n), shape,
                                           self.dtype)
                        for name, shape in self._shapes.items()}
        self.grads = Gradients((name, np.zeros_like(p)) for name, p in self._params.items())

    @property
    def params(self):
        """The live parameter arrays by name (for optimisers); see also `state_dict`."""
        return self._params

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            self.load_state_dict({name: value}, strict=False)
        elif name in self._fixed and name in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.{name} is fixed at construction (the "
                                 f"parameters' shapes and dtype follow it): build a new "
                                 f"{type(self).__name__} instead")
        else:
            super().__setattr__(name, value)

    def state_dict(self):
        """A copy of the parameters, named and shaped as the PyTorch module's."""
        return {name: p.copy() for name, p in self._params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters in from a mapping of name -> array-like (NumPy arrays, PyTorch
        tensors, ...). Shapes must match; with ``strict``, missing or unexpected names are an
        error (without it they are skipped). Nothing changes unless every entry is valid.
        Values are copied into the existing arrays, so references to ``params`` (held by an
        optimiser, say) stay valid and nothing aliases the caller's memory."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of parameter name -> array (as "
                            f"state_dict() returns), got {type(state_dict).__name__}")
        expected = self._shapes
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError(f"load_state_dict: {'; '.join(parts)} "
                           f"(expected {list(expected)})")
        new = {name: check_shape(name, float_array(name, state_dict[name],
                                                   self._param_dtype(name)), shape)
               for name, shape in expected.items() if name in state_dict}
        for name, value in new.items():
            self._params[name][...] = value

    def _param_dtype(self, name):
        """The dtype parameter ``name`` is stored in (a container's children may differ)."""
        return self.dtype

    def save(self, path):
        """Write ``state_dict()`` to ``path`` as an uncompressed ``.npz`` archive (one array
        per parameter name). The file name is used as given: no ``.npz`` is appended, so
        ``load(path)`` finds it."""
        with open(path, "wb") as f:
            np.savez(f, **self.state_dict())

    def load(self, path):
        """Load parameters saved by ``save`` (or any ``.npz`` with the ``state_dict`` names),
        strictly: missing or unexpected names raise KeyError, wrong shapes ValueError, a
        non-float array TypeError, each naming the file. Nothing changes unless every entry
        is valid."""
        state = read_npz(path, "a .npz archive of parameters")
        try:
            self.load_state_dict(state, strict=True)
        except (KeyError, ValueError, TypeError) as exc:
            raise type(exc)(f"{path}: {exc.args[0]}") from None

    def zero_grad(self):
        """Reset every accumulated gradient in ``grads`` to zero."""
        for g in self.grads.values():
            g[...] = 0

    def _checked_params(self):
        """The parameters, after an O(1) check each that nobody replaced one in ``params``
        with an array the kernels cannot take."""
        for name, shape in self._shapes.items():
            p = self._params.get(name)
            if not (isinstance(p, np.ndarray) and p.shape == shape and p.dtype == self.dtype
                    and p.flags.c_contiguous and p.flags.aligned):
                raise ValueError(f"parameter {name} must be a C-contiguous {self.dtype} array "
                                 f"of shape {shape} (aligned in memory); assign through "
                                 "load_state_dict or attribute access to convert")
        return self._params

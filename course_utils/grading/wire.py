"""The wire between the judge (outside) and the submission's sandbox: messages, and plain data.

Every message is one JSON document with its length in front. What the sandbox sends back is
*plain data*: numbers, strings, lists, tuples, dicts, sets, bytes, tensors and NumPy arrays (raw
bytes with a dtype from a fixed list and a shape), and for anything else an opaque handle number.
A model made only of PyTorch's own layers is plain data too (class names from torch.nn, their
settings and weights), rebuilt in the judge with the judge's PyTorch code.
`from_plain` rebuilds real Python, NumPy and PyTorch values from it in the judge and refuses
everything else, so nothing the submission sends can carry code, override `__eq__`, or be anything
but the numbers it claims to be. (The judge's own requests carry pickles: the judge is trusted, the
sandbox unpickles them.)
"""

from __future__ import annotations

import base64
import json
import math

MAX_MESSAGE_BYTES = 512 * 2**20
TENSOR_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16",
                 "float32", "float64", "complex64", "complex128")
ARRAY_DTYPES = ("bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
                "float16", "float32", "float64", "complex64", "complex128")


class WireError(ValueError):
    """What came over the wire is not a message, or not plain data."""


def send(stream, message: dict) -> None:
    data = json.dumps(message).encode()
    stream.write(len(data).to_bytes(8, "big") + data)
    stream.flush()


def receive(stream, limit: int = MAX_MESSAGE_BYTES) -> dict:
    """The next message; EOFError when the other side has gone, WireError when it is garbage."""
    size = int.from_bytes(_read(stream, 8), "big")
    if size > limit:
        raise WireError(f"a message of {size} bytes (the limit is {limit})")
    message = json.loads(_read(stream, size))
    if not isinstance(message, dict):
        raise WireError("a message that is not a JSON object")
    return message


def _read(stream, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("the other side closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- in the sandbox: any value -> plain data ---------------------------------------------------

def to_plain(value, keep, known=None):
    """`value` as plain data; `keep(obj)` stores what is not plain data and returns its handle;
    `known` maps the ids of the call's own arguments (and their parameters) to their numbers, so
    that returning one of them returns the judge's very object (`out is w` holds)."""
    import numpy
    import torch

    if known and id(value) in known:
        return {"known": known[id(value)]}
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return {"list": [to_plain(v, keep, known) for v in value]}
    if kind is torch.Size:
        return {"size": [int(n) for n in value]}
    if isinstance(value, tuple):                  # named tuples arrive as plain tuples
        return {"tuple": [to_plain(v, keep, known) for v in value]}
    if kind is dict or (isinstance(value, dict) and kind.__module__ == "collections"):
        return {"dict": [[to_plain(k, keep, known), to_plain(v, keep, known)] for k, v in value.items()]}
    if kind in (set, frozenset):
        return {"set": [to_plain(v, keep, known) for v in value]}
    if kind is bytes:
        return {"bytes": _b64(value)}
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        tensor = tensor.to_dense() if tensor.layout != torch.strided else tensor
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in TENSOR_DTYPES:
            return {"handle": keep(value), "type": lineage(value)}
        flat = tensor.contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        return {"tensor": {"dtype": dtype, "shape": list(tensor.shape), "data": _b64(raw),
                           "requires_grad": bool(value.requires_grad),
                           "parameter": isinstance(value, torch.nn.Parameter)}}
    if isinstance(value, (numpy.ndarray, numpy.generic)) and str(value.dtype) in ARRAY_DTYPES:
        array = numpy.asarray(value)            # (tobytes() writes C order; a scalar stays 0-d)
        return {"ndarray": {"dtype": str(array.dtype), "shape": list(array.shape),
                            "data": _b64(array.tobytes()), "scalar": isinstance(value, numpy.generic)}}
    if isinstance(value, torch.nn.Module) and all(_builtin(m) for m in value.modules()):
        return {"module": _module(value, keep, known)}
    if kind is torch.dtype:
        return {"torch_dtype": str(value).removeprefix("torch.")}
    if kind is torch.device:
        return {"device": str(value)}
    if kind is torch.Generator:
        return {"generator": to_plain(value.get_state(), keep, known)}
    return {"handle": keep(value), "type": lineage(value)}


# a module made only of PyTorch's own layers travels by value: its class names, settings, weights
MODULE_INTERNALS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


def _builtin(module) -> bool:
    return type(module).__module__.startswith("torch.nn.modules.")


def _setting(value) -> bool:
    """A layer's plain setting (sizes, strides, flags, names), never a function or a hook."""
    if value is None or type(value) in (bool, int, float, str):
        return True
    return type(value) in (tuple, list) and all(_setting(v) for v in value)


def _module(module, keep, known) -> dict:
    settings = {k: v for k, v in vars(module).items() if k not in MODULE_INTERNALS and _setting(v)}
    return {"class": f"{type(module).__module__}.{type(module).__qualname__}",
            "settings": to_plain(settings, keep, known), "parameters": to_plain(dict(module._parameters), keep, known),
            "buffers": to_plain(dict(module._buffers), keep, known),
            "children": [[name, {"module": _module(child, keep, known)} if child is not None else None]
                         for name, child in module._modules.items()]}


def lineage(value) -> list[str]:
    """The qualified names of the classes `value` is an instance of, its own first."""
    return [f"{c.__module__}.{c.__qualname__}" for c in type(value).__mro__][:20]


# --- in the judge: plain data -> values, strictly ------------------------------------------------

def from_plain(data, remote, depth: int = 0, known=()):
    """Rebuild a value from plain data; `remote(handle, type_name)` makes the judge's stand-in
    for an object that stayed in the sandbox. Anything else raises WireError."""
    kind = type(data)
    if data is None or kind in (bool, int, float, str):
        return data
    if depth > 64:
        raise WireError("plain data nested more than 64 deep")
    if kind is dict and set(data) == {"handle", "type"} and type(data["handle"]) is int:
        names = data["type"] if type(data["type"]) is list else []
        return remote(data["handle"], [str(n)[:200] for n in names[:20]])
    if kind is not dict or len(data) != 1:
        raise WireError(f"not plain data: a {kind.__name__}")
    (tag, body), = data.items()
    again = lambda v: from_plain(v, remote, depth + 1, known)  # noqa: E731
    if tag == "known" and type(body) is int and 0 <= body < len(known):
        return known[body]
    if tag in ("list", "tuple", "set") and type(body) is list:
        items = [again(v) for v in body]
        return items if tag == "list" else tuple(items) if tag == "tuple" else set(items)
    if tag == "dict" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
        return {again(k): again(v) for k, v in body}
    if tag == "size" and type(body) is list and all(type(n) is int for n in body):
        import torch
        return torch.Size(body)
    if tag == "bytes" and type(body) is str:
        return base64.b64decode(body, validate=True)
    if tag == "tensor" and type(body) is dict:
        return _tensor(body)
    if tag == "ndarray" and type(body) is dict:
        return _array(body)
    if tag == "module" and type(body) is dict:
        return _rebuild_module(body, again)
    if tag == "torch_dtype" and body in TENSOR_DTYPES:
        import torch
        return getattr(torch, body)
    if tag == "device" and type(body) is str:
        import torch
        return torch.device(body)
    if tag == "generator":
        import torch
        generator = torch.Generator()
        generator.set_state(again(body))
        return generator
    raise WireError(f"not plain data: {str(tag)[:40]!r}")


def torch_class(qualified: str):
    """The PyTorch class `qualified` names, if PyTorch (already imported) has it; else None."""
    import sys

    module_name, _, name = str(qualified).rpartition(".")
    module = sys.modules.get(module_name) if module_name.startswith("torch.") else None
    found = getattr(module, name, None) if module is not None and "<" not in name else None
    return found if isinstance(found, type) and found is not object else None


def _rebuild_module(body: dict, again):
    """A PyTorch layer (or a container of them) rebuilt here from its class name, settings and
    weights: its forward is this process's PyTorch code, whatever the sandbox did to its own."""
    import torch

    cls = torch_class(body.get("class", ""))
    if cls is None or not issubclass(cls, torch.nn.Module) or not cls.__module__.startswith("torch.nn.modules."):
        raise WireError(f"not a PyTorch layer: {str(body.get('class'))[:80]}")
    module = cls.__new__(cls)
    torch.nn.Module.__init__(module)
    settings = again(body.get("settings"))
    if type(settings) is not dict:
        raise WireError("a layer without settings")
    for name, value in settings.items():
        if type(name) is not str or name.startswith("__") or name in MODULE_INTERNALS or not _setting(value):
            raise WireError(f"a layer setting that is not plain: {str(name)[:40]}")
        object.__setattr__(module, name, value)
    for kind, store in (("parameters", module._parameters), ("buffers", module._buffers)):
        tensors = again(body.get(kind))
        if type(tensors) is not dict or not all(t is None or isinstance(t, torch.Tensor) for t in tensors.values()):
            raise WireError(f"a layer's {kind} that are not tensors")
        for name, tensor in tensors.items():
            if kind == "parameters" and tensor is not None and not isinstance(tensor, torch.nn.Parameter):
                tensor = torch.nn.Parameter(tensor, requires_grad=tensor.requires_grad)
            store[str(name)] = tensor
    children = body.get("children")
    if type(children) is not list:
        raise WireError("a layer's children that are not a list")
    for pair in children:
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
            raise WireError("a malformed child layer")
        child = again(pair[1])
        if child is not None and not isinstance(child, torch.nn.Module):
            raise WireError("a child layer that is not a layer")
        module._modules[pair[0]] = child
    return module


def _raw(body: dict, dtypes: tuple, itemsize, what: str) -> tuple[str, list[int], bytes]:
    """A tensor's or an array's dtype, shape and bytes, each checked against the others."""
    dtype, shape = body.get("dtype"), body.get("shape")
    if type(shape) is not list or not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 32:
        raise WireError(f"{what} with a malformed shape")
    if dtype not in dtypes or type(body.get("data")) is not str:
        raise WireError(f"{what} with a malformed dtype or data")
    raw = base64.b64decode(body["data"], validate=True)
    if len(raw) != math.prod(shape) * itemsize(dtype):
        raise WireError(f"{what} whose data does not match its shape")
    return dtype, shape, raw


def _tensor(body: dict):
    import torch

    name, shape, raw = _raw(body, TENSOR_DTYPES, lambda d: torch.empty(0, dtype=getattr(torch, d)).element_size(),
                            "a tensor")
    dtype = getattr(torch, name)
    tensor = (torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape).clone()
              if raw else torch.empty(shape, dtype=dtype))
    if body.get("requires_grad") is True and (tensor.is_floating_point() or tensor.is_complex()):
        tensor = torch.nn.Parameter(tensor) if body.get("parameter") is True else tensor.requires_grad_()
    return tensor


def _array(body: dict):
    import numpy

    dtype, shape, raw = _raw(body, ARRAY_DTYPES, lambda d: numpy.dtype(d).itemsize, "an array")
    array = numpy.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return array[()] if body.get("scalar") is True and array.ndim == 0 else array


def random_states():
    """PyTorch's, NumPy's and Python's global random states, carried across every call (both
    ways, in full) so that seeding in a test seeds the student's code as it would in one process.
    Python's 625 numbers go as one array, not 625 items."""
    import random

    import numpy
    import torch

    version, words, gauss = random.getstate()
    return torch.get_rng_state(), numpy.random.get_state(), (version, numpy.array(words, dtype=numpy.uint64), gauss)


def set_random_states(states) -> None:
    import random

    import numpy
    import torch

    torch_state, numpy_state, (version, words, gauss) = states
    torch.set_rng_state(torch_state)
    numpy.random.set_state(numpy_state)
    random.setstate((version, tuple(int(word) for word in words), gauss))


def known_objects(parts) -> list:
    """The call's arguments that a result may be, numbered alike on both sides: each part, and
    each module's parameters and buffers."""
    import torch

    found = []
    for part in parts:
        found.append(part)
        if isinstance(part, torch.nn.Module):
            found += list(part.parameters()) + list(part.buffers())
    return found


def mutable_parts(value, skip=frozenset(), depth: int = 0):
    """What a call may change in place among its arguments: tensors, modules, generators, dicts
    and lists (whole), in a fixed order. The judge and the sandbox each walk their own copy of
    the arguments, so the n-th part here is the n-th there; `skip` holds the ids of objects that
    are the submission's own (handles), not copies."""
    import torch

    if id(value) in skip:
        return
    if isinstance(value, (torch.Tensor, torch.nn.Module, torch.Generator, dict, list)) and depth > 0:
        yield value
    elif isinstance(value, (tuple, dict)) and depth < 8:   # the (args, kwargs) pair, and tuples
        for item in (value.values() if isinstance(value, dict) else value):
            yield from mutable_parts(item, skip, depth + 1)

"""Hints shown with errors, each only for the case it fits."""

from __future__ import annotations

# Objects that multiprocessing hands only to children it forks (or that cannot be pickled
# at all): their pickling errors say so in these words.
_INHERITED_ONLY = (
    "through inheritance",
    "AuthenticationString",
    "_thread.lock",
    "_thread.RLock",
    "_io.",
    "socket",
    "SemLock",
    "generator",
)
_TORCH_MODULE = ("module", "torch")


def unpicklable_job(exc: BaseException) -> str:
    """What to do when the function or its arguments cannot be pickled for the workers.

    >>> unpicklable_job(RuntimeError("Queue objects should only be shared between "
    ...     "processes through inheritance")).startswith("it holds an object")
    True
    >>> "shadow torch modules" in unpicklable_job(TypeError("cannot pickle 'module' object"))
    True
    >>> "shadow" in unpicklable_job(TypeError("cannot pickle 'Foo' object"))
    False
    """
    text = f"{type(exc).__name__}: {exc}"
    if any(sign in text for sign in _INHERITED_ONLY):
        return (
            "it holds an object that workers can only inherit, not receive (a multiprocessing "
            "queue, lock or event, a thread lock, an open file or socket): pass "
            "start_method='fork', whose workers inherit the function and its arguments "
            "unpickled, or create the object inside the function"
        )
    if any(sign in text for sign in _TORCH_MODULE):
        return (
            "move what the function uses into an importable module, or rename globals that "
            "shadow torch modules (e.g. an attribute named 'classes' read next to torch)"
        )
    return (
        "everything the function uses must be picklable: move it into an importable "
        "module, or pass start_method='fork', whose workers inherit it unpickled"
    )

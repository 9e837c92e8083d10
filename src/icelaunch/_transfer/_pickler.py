"""Pickle a job so that functions shipped by value keep their real file names.

cloudpickle (3.x) writes ``<dynamic-code>`` as the file of every code object it
sends by value (functions of ``__main__``, notebooks, lambdas), so worker
tracebacks and stacks could not say where such a function lives. This pickler
puts the real file name back; the rest of cloudpickle's reduction is unchanged.
"""

from __future__ import annotations

import io
import pickle
import types
from collections import ChainMap
from typing import Any

import cloudpickle

_PLACEHOLDER = "<dynamic-code>"
_cloudpickle_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _code_reduce(code: types.CodeType) -> Any:
    rebuild, args = _cloudpickle_reduce(code)
    return rebuild, tuple(code.co_filename if arg == _PLACEHOLDER else arg for arg in args)


class CodePickler(cloudpickle.Pickler):  # type: ignore[misc]
    dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)


def dumps(obj: Any) -> bytes:
    """``cloudpickle.dumps(obj)``, with real file names in code sent by value."""
    with io.BytesIO() as buffer:
        CodePickler(buffer, protocol=pickle.DEFAULT_PROTOCOL).dump(obj)
        return buffer.getvalue()

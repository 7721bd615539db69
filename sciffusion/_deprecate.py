"""Deprecated keyword aliases: an old keyword keeps working for one release and warns.

``@renamed_keywords(num_samples="n_members")`` lets a caller still write ``num_samples=4``: the
value is passed on as ``n_members=4`` with a ``FutureWarning`` naming the new keyword, and giving
both raises ``TypeError``. ``old=(new, {old_value: new_value})`` also maps the values, e.g.
``if_exists=("mode", {"error": "w-", "overwrite": "w", "resume": "resume"})``.
"""

import functools
import warnings
from typing import Any, Callable


def renamed(kwargs: dict[str, Any], old: str, new: str, func_name: str, values: dict | None = None) -> None:
    """Move ``kwargs[old]`` to ``kwargs[new]`` in place (mapping its value with ``values``), warning."""
    if old not in kwargs:
        return
    if new in kwargs:
        raise TypeError(f"{func_name}: got both {old}= (deprecated) and {new}=; pass only {new}=")
    value = kwargs.pop(old)
    warnings.warn(f"{func_name}: {old}= is deprecated, use {new}=", FutureWarning, stacklevel=3)
    if values is not None:
        if value not in values:
            raise ValueError(f"{func_name}: {old} must be one of {list(values)}, got {value!r} (use {new}=)")
        value = values[value]
    kwargs[new] = value


def renamed_keywords(**renames: str | tuple[str, dict]) -> Callable:
    """Decorator: accept each ``old`` keyword as a deprecated alias of ``new`` (see the module)."""

    def wrap(func: Callable) -> Callable:
        name = func.__qualname__

        @functools.wraps(func)
        def inner(*args, **kwargs):
            for old, new in renames.items():
                new, values = (new, None) if isinstance(new, str) else new
                renamed(kwargs, old, new, name, values)
            return func(*args, **kwargs)

        return inner

    return wrap

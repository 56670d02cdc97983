"""A request's ``instruction``: the instruction view that scores it, the recent views kept.

An instruction (any route) scores the request with ``reranker.with_instruction(...)`` where
the reranker takes instructions (the LLM rerankers); ``null`` or none keeps its own. Views
share the loaded model; the last ``MAX_INSTRUCTION_VIEWS`` are kept.
"""

from __future__ import annotations

from collections import OrderedDict

from milvus_rerank.app.serve.failures import HTTPError
from milvus_rerank.core.base import Reranker, describe_value
from milvus_rerank.core.errors import ConfigurationError

__all__ = ["MAX_INSTRUCTION_CHARS", "MAX_INSTRUCTION_VIEWS", "scorer_for"]

#: Longest ``instruction`` a request may carry, and how many instructions' views are kept.
MAX_INSTRUCTION_CHARS = 4096
MAX_INSTRUCTION_VIEWS = 64


def _refuse_unsupported(reranker: Reranker) -> HTTPError:
    from milvus_rerank.core.registry import providers_taking

    takers = ", ".join(providers_taking("instruction"))
    return HTTPError(
        422,
        f"instruction is not supported by this server: {type(reranker).__name__} "
        f"takes no instruction (the rerankers that do: {takers})",
    )


def scorer_for(
    reranker: Reranker, views: OrderedDict[str, Reranker], instruction: object, status: int
) -> Reranker:
    """Who scores the request: the view for the body's ``instruction``, else the reranker.

    Raises:
        HTTPError: 422 where the reranker takes no instruction; ``status`` (the route's
            invalid-input status) for an instruction that is not a usable string.
    """
    if instruction is None:
        return reranker
    with_instruction = getattr(reranker, "with_instruction", None)
    if not callable(with_instruction):
        raise _refuse_unsupported(reranker)
    if not isinstance(instruction, str) or len(instruction) > MAX_INSTRUCTION_CHARS:
        raise HTTPError(
            status,
            f"instruction must be a string of at most {MAX_INSTRUCTION_CHARS} characters or "
            f"null, got {describe_value(instruction)}",
        )
    if instruction == getattr(reranker, "instruction", None):
        return reranker
    view = views.pop(instruction, None)
    if view is None:
        try:
            instruction.encode("utf-8")
            view = with_instruction(instruction)
        except UnicodeEncodeError as exc:
            message = f"instruction is not valid Unicode text (lone surrogate at {exc.start})"
            raise HTTPError(status, message) from None
        except ConfigurationError as exc:
            raise HTTPError(status, str(exc)) from None
    views[instruction] = view  # the most recent last; the oldest go past the bound
    while len(views) > MAX_INSTRUCTION_VIEWS:
        views.popitem(last=False)
    return view

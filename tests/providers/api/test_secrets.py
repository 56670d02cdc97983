"""Keys never leak; remote code stays off; safetensors win over pickles."""

from __future__ import annotations

import logging
import shutil
import traceback
from pathlib import Path
from typing import Any

import pytest

from milvus_rerank import (
    AuthenticationError,
    CrossEncoderReranker,
    ProviderError,
    ProviderUnavailableError,
)
from tests.fakes import FaultPlan, FaultServer, api_reranker, fast_retry
from tests.providers.api.specs import SPECS

KEY = "sk-live-7Qz3" + "Xy9Lm2Np8Rt4Vw6" * 2
API = sorted(SPECS)

#: Outside the unit tier: loopback servers, faults or load.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("provider", API)
@pytest.mark.parametrize("fault", ["ok", "401", "503", "html"])
def test_key_never_in_repr_logs_errors_or_tracebacks(
    provider: str,
    fault: str,
    fault_plan: FaultPlan,
    fault_server: FaultServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    for name in ("httpx", "httpcore", "milvus_rerank", "milvus_rerank.http"):
        caplog.set_level(logging.DEBUG, logger=name)  # restored after the test, unlike setLevel
    fault_plan.script = [fault] * 4
    seen: list[str] = []
    reranker = api_reranker(
        provider, fault_server.url, api_key=KEY, retry=fast_retry(max_retries=1)
    )
    with reranker:
        try:
            reranker.rerank("what is milvus", ["milvus db", "paris"])
        except ProviderError as exc:
            seen += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
            if fault == "401":
                assert isinstance(exc, AuthenticationError)
        seen += [repr(reranker), str(reranker), repr(reranker.api_key), str(vars(reranker))]
    spec = SPECS[provider]
    assert fault_plan.headers[0][spec.auth_header] == spec.auth(KEY)  # sent, to the server only
    captured = capsys.readouterr()
    seen += [caplog.text, captured.out, captured.err]
    for text in seen:
        assert KEY not in text


def test_unreachable_server_error_has_no_key() -> None:
    reranker = SPECS["jina"].cls(
        api_key=KEY, base_url="http://127.0.0.1:9", retry=fast_retry(max_retries=0)
    )
    with pytest.raises(ProviderUnavailableError) as info:
        reranker.rerank("q", ["d"])
    assert KEY not in "".join(traceback.format_exception(info.value))
    reranker.close()


def test_remote_code_stays_off_unless_asked(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    calls: list[dict[str, Any]] = []
    real = transformers.AutoModelForSequenceClassification.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", spy)
    CrossEncoderReranker(str(tiny_models["ce"])).load()
    CrossEncoderReranker(str(tiny_models["ce"]), trust_remote_code=True).load()
    assert [c["trust_remote_code"] for c in calls] == [False, True]


def test_safetensors_are_preferred_over_pickles(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "both"
    shutil.copytree(tiny_models["ce"], folder)
    assert (folder / "model.safetensors").is_file()
    # a pickle that would fail (or worse) if it were ever unpickled
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle: loading this would raise")
    expected = CrossEncoderReranker(str(tiny_models["ce"])).rerank("q milvus", ["milvus", "paris"])
    assert CrossEncoderReranker(str(folder)).rerank("q milvus", ["milvus", "paris"]) == expected

"""The pure path rule (web.paths): what is refused, and what an accepted path forwards."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from vllm_gateway.web.paths import InvalidPath, RequestPath, name_path, normalise

ACCEPTED = [
    ("/v1/chat/completions", RequestPath("/v1/chat/completions", "")),
    ("/v1/chat/completions?x=%2e%2e/../y", RequestPath("/v1/chat/completions", "x=%2e%2e/../y")),
    ("/v1/%63hat", RequestPath("/v1/chat", "")),
    ("/v1/ch%C3%A4t", RequestPath("/v1/chät", "")),
    ("/v1/a%20b/", RequestPath("/v1/a b/", "")),
    ("/v1/...", RequestPath("/v1/...", "")),  # three dots are a name, not a dot segment
    ("/", RequestPath("/", "")),
]
REFUSED = [
    ("/v1/../x", "dot segment"), ("/v1/%2e%2E/x", "dot segment"), ("/v1/./x", "dot segment"),
    ("/v1/..;a/x", "dot segment"), ("/v1/x/..", "dot segment"),
    ("/v1/a%2Fb", "encoded slash"), ("/v1/a%5cb", "encoded slash"),
    ("/v1//x", "send '/v1/x'"), ("/v1\\x", "send '/v1/x'"), ("//v1/x", "send '/v1/x'"),
    ("/v1/%252e", "escape of an escape"), ("/v1/%zz", "not an escape"),
    ("/v1/%ff", "not UTF-8"), ("/v1/%0a", "control character"),
    ("http://h/v1/x", "starting with '/'"), ("*", "starting with '/'"), ("/v1/x#y", "fragment"),
]


@pytest.mark.parametrize(("raw", "expected"), ACCEPTED)
def test_accepted_paths(raw: str, expected: RequestPath) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize(("raw", "why"), REFUSED)
def test_refused_paths_say_why_and_name_the_path(raw: str, why: str) -> None:
    with pytest.raises(InvalidPath) as refused:
        normalise(raw)
    assert why in refused.value.message and repr(raw) in refused.value.message
    assert refused.value.status == 400 and refused.value.body()["error"]["code"] == "invalid_path"


def test_under_needs_something_below_the_prefix() -> None:
    assert normalise("/v1/x").under("/v1/")
    assert not normalise("/v1/").under("/v1/")
    assert not normalise("/v10/x").under("/v1/")


PIECES = st.sampled_from(["v1", "chat", "completions", "fake", "hang", ".", "..", "...", "%2e",
                          "%2E", "%2f", "%2F", "%5c", "%5C", "/", "//", "\\", ";", "%25", "%",
                          "%252e", "%C3%A4", "%ff", "%00", "a b", "~", "?", "#"])
RAW_PATHS = st.lists(PIECES, max_size=10).map(lambda parts: "/" + "".join(parts))


@given(raw=RAW_PATHS)
def test_an_accepted_path_is_one_reading_for_every_reader(raw: str) -> None:
    try:
        found = normalise(raw)
    except InvalidPath:
        return
    segments = found.path.split("/")
    assert not any(s.split(";")[0] in (".", "..") for s in segments)
    assert "//" not in found.path and "\\" not in found.path
    # What is forwarded reads back as the same path, to this rule and to the HTTP client.
    path, _, _ = found.target.partition("?")
    assert normalise(path).path == found.path
    assert URL(path, encoded=True).path == found.path
    assert URL("http://127.0.0.1:1" + path).raw_path == path


@given(name=st.text(st.sampled_from("ab-_/.%\\;:@ \x00\x7fä~?#"), min_size=1, max_size=12)
      | st.text(min_size=1, max_size=12))
def test_a_model_name_in_a_url_reads_back_as_itself_or_is_refused(name: str) -> None:
    try:
        written = name_path(name)
    except ValueError:
        return
    found = normalise(f"/gateway/models/{written}/load")
    assert found.path == f"/gateway/models/{name}/load"

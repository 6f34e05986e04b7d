"""Does the judge server constrain replies with vLLM's ``structured_outputs``?

vLLM >= 0.12 constrains a chat completion's output with ``{"structured_outputs": {"regex": ...}}`` in the request
body; the older ``guided_regex``/``guided_json`` fields were removed in 0.12 and are silently ignored there, while
an older vLLM silently ignores ``structured_outputs``. So the judge only sends the verdict regex where it is known
to work, and falls back to lenient parsing of free text elsewhere. Per replica, in order:

1. ``JUDGE_STRUCTURED_OUTPUTS=on|off`` decides without asking (``auto``, the default, asks);
2. ``GET /version`` at the server root (vLLM's endpoint): >= 0.12 supports it, older does not;
3. otherwise (no ``/version``: a gateway, another server) one probe request asks for ``hello`` under a regex of six
   digits: a reply of six digits proves the constraint is applied; a 400 or a free reply proves it is not.

Every replica must support it for the judge to constrain. :func:`detect_structured_outputs_sync` is what a
launcher preflight calls to report the mode before training.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from .client import ENV_STRUCTURED_OUTPUTS, JudgeClient, JudgeError, JudgeSettings

MIN_VLLM = (0, 12)
PROBE_REGEX = "[0-9]{6}"
PROBE_MESSAGES = [{"role": "user", "content": "Reply with one word: hello."}]


@dataclass(frozen=True)
class StructuredSupport:
    """The mode the judge uses: ``constrained`` or free text, and why. ``definitive`` is ``False`` when the server
    could not be asked (unreachable): callers ask again later instead of settling on free text."""

    constrained: bool
    reason: str
    definitive: bool = True

    def describe(self) -> str:
        """One log line: which mode and why."""
        if self.constrained:
            return f"judge replies: constrained by the structured_outputs verdict regex ({self.reason})"
        return f"judge replies: free text, parsed leniently ({self.reason})"


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """``"0.24.0"`` / ``"0.12.0rc1"`` / ``"0.11.1.dev3+gabc"`` -> ``(0, 24, 0)`` / ``(0, 12, 0)`` / ``(0, 11, 1)``."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", text or "")  # pragma: no mutate (equivalent: any non-version)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


async def _probe(settings: JudgeSettings, url: str) -> StructuredSupport:
    client = JudgeClient(settings.with_(base_urls=(url,), max_retries=0))  # one request: no retry
    try:
        result = await client.chat(
            PROBE_MESSAGES, max_tokens=16, temperature=0.0, structured_outputs={"regex": PROBE_REGEX}
        )
    except JudgeError as exc:
        if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 404, 408, 429):
            return StructuredSupport(False, f"{url} rejected structured_outputs (HTTP {exc.status})")
        return StructuredSupport(False, f"{url} could not be probed: {exc}", definitive=False)
    finally:
        await client.aclose()
    if re.fullmatch(PROBE_REGEX, result.text.strip()):
        return StructuredSupport(True, f"{url} honoured a probe regex")
    replied = result.text[:30]  # pragma: no mutate (how much of the reply the message quotes is cosmetic)
    return StructuredSupport(False, f"{url} ignored a probe regex (replied {replied!r})")


async def _detect_one(client: JudgeClient, url: str) -> StructuredSupport:
    version = await client.server_version(url)
    parsed = parse_version(version)
    if parsed is not None:
        if parsed >= MIN_VLLM:
            return StructuredSupport(True, f"vLLM {version} at {url}")
        return StructuredSupport(False, f"vLLM {version} at {url} predates structured_outputs (0.12)")
    return await _probe(client.settings, url)


async def detect_structured_outputs(client: JudgeClient) -> StructuredSupport:
    """Whether ``client``'s replicas all constrain replies (see module doc); never raises on server errors."""
    mode = client.settings.structured_outputs
    if mode == "off":
        return StructuredSupport(False, f"{ENV_STRUCTURED_OUTPUTS}=off")
    if mode == "on":
        return StructuredSupport(True, f"{ENV_STRUCTURED_OUTPUTS}=on")
    reasons = []
    for url in client.settings.base_urls:
        support = await _detect_one(client, url)
        if not support.constrained:
            return support
        reasons.append(support.reason)
    return StructuredSupport(True, "; ".join(reasons))


def detect_structured_outputs_sync(settings: JudgeSettings) -> StructuredSupport:
    """:func:`detect_structured_outputs` for synchronous callers (the launcher preflight, the CLI)."""

    async def go() -> StructuredSupport:
        client = JudgeClient(settings)
        try:
            return await detect_structured_outputs(client)
        finally:
            await client.aclose()

    return asyncio.run(go())

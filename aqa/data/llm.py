"""Optional LLM-written distractors through an OpenAI-compatible `/v1/chat/completions` endpoint.

Standard library only (urllib), so the data commands need no client package. The LLM is an
aid, never a dependency: every suggestion is validated, the rule-based distractors fill any
gap, and a network or HTTP error falls back to the rules with a warning instead of stopping
the run. The API key is read from an environment variable whose *name* the user gives; the
key itself is kept out of logs, reprs, exceptions and every file written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable

from aqa.textnorm import loose_key

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You write wrong answer options (distractors) for multiple-choice questions about short "
    "audio clips. Distractors must be plausible, clearly different from the correct answer, "
    "and written in exactly the same style and format as the correct answer."
)


def chat_url(base_url: str) -> str:
    """The chat-completions URL for a base URL given with or without `/v1` (both are common)."""
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


class LLMError(RuntimeError):
    """A request that produced no usable reply (network, HTTP status, malformed JSON)."""


class ChatClient:
    """A minimal OpenAI-compatible chat client.

    `api_key_env` names the environment variable holding the key; an unset variable is a
    warning (local servers such as vLLM usually need no key), not an error.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, *,
                 timeout: float = 30.0, temperature: float = 0.7, max_tokens: int = 256):
        self.url = chat_url(base_url)
        self.model = model
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.api_key_env = api_key_env
        self._key: str | None = None
        if api_key_env:
            self._key = os.environ.get(api_key_env) or None
            if self._key is None:
                log.warning("environment variable %s is not set; calling %s without an API key",
                            api_key_env, self.url)

    def __repr__(self) -> str:
        # Only the variable's name: a repr ends up in logs and tracebacks.
        return (f"ChatClient(url={self.url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r})")

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def complete(self, messages: list[dict[str, str]]) -> str:
        """Send one chat request; return the first choice's message text or raise LLMError."""
        body = json.dumps({"model": self.model, "messages": messages,
                           "temperature": self.temperature, "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            # A server may echo request headers in its error body: redact before it is shown.
            snippet = self._redact(e.read(300).decode("utf-8", "replace")).strip()
            raise LLMError(f"HTTP {e.code} {e.reason} from {self.url}"
                           + (f": {snippet}" if snippet else "")) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise LLMError(f"cannot reach {self.url}: {self._redact(str(reason))}") from None
        try:
            reply = json.loads(raw)
            content = reply["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMError(f"unexpected reply from {self.url} (not an OpenAI chat completion)") from None
        if not isinstance(content, str):
            raise LLMError(f"unexpected reply from {self.url}: message content is not text")
        return content


def parse_options(text: str) -> list[str]:
    """Pull option texts out of a model's reply: a JSON list if there is one, else one per line
    with bullets, numbering and letter prefixes ("B. ", "2) ") removed."""
    m = re.search(r"\[.*\]", text, flags=re.S)
    if m:
        try:
            items = json.loads(m.group(0))
            if isinstance(items, list):
                return [str(x) for x in items if isinstance(x, (str, int, float))]
        except ValueError:
            pass
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)]|[A-Za-z][.)])\s+", "", line).strip().strip('"')
        if line:
            out.append(line)
    return out


def clean_option(text: str) -> str:
    """Trim whitespace, quotes and stray trailing punctuation (stored options carry none)."""
    return re.sub(r"[\s.,;:!]+$", "", str(text).strip().strip("\"'")).strip()


def merge_distractors(suggested: Iterable[str] | None, answer: str, fallback: Iterable[str], n: int, *,
                      canon: Callable[[str], str | None] | None = None,
                      forbidden: Iterable[str] = ()) -> tuple[list[str], int]:
    """Up to `n` distractors: valid suggestions first, then `fallback` (rule-based) to fill.

    A suggestion is kept when it is non-empty, `canon` accepts it (canon returns the text to
    use, e.g. a number re-worded in the dataset's style, or None to reject it), it differs
    from the answer and from every `forbidden` text (loosely compared), and it repeats no
    option already kept. Fallback entries pass the same uniqueness checks. Returns the
    distractors and how many came from the suggestions.
    """
    taken = {loose_key(answer)} | {loose_key(f) for f in forbidden}
    out: list[str] = []
    from_llm = 0
    for source, items in (("llm", suggested or ()), ("rules", fallback)):
        for item in items:
            if len(out) >= n:
                break
            text = clean_option(item)
            if source == "llm" and text and canon is not None:
                text = canon(text) or ""
            key = loose_key(text)
            if not text or not key or key in taken:
                continue
            taken.add(key)
            out.append(text)
            from_llm += source == "llm"
    return out, from_llm


class LLMDistractors:
    """Asks a chat model for distractors; after `max_failures` failed requests in a row it
    stops asking (one warning) so a dead endpoint does not slow the whole run down."""

    def __init__(self, client: ChatClient, *, max_failures: int = 3):
        self.client = client
        self.max_failures = max_failures
        self.failures_in_row = 0
        self.disabled = False
        self.requests = 0
        self.errors = 0

    def suggest(self, question: str, answer: str, n: int = 3, *, hint: str = "") -> list[str] | None:
        """Up to `n` raw suggestions, or None when the model could not be asked (the caller
        then uses its rule-based distractors)."""
        if self.disabled:
            return None
        lines = [f"Question: {question}", f"Correct answer: {answer}"]
        if hint:
            lines.append(hint)
        lines.append(f"Write {n} wrong but plausible answer options. Reply with only a JSON list "
                     f"of {n} strings.")
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": "\n".join(lines)}]
        self.requests += 1
        try:
            reply = self.client.complete(messages)
        except LLMError as e:
            self.errors += 1
            self.failures_in_row += 1
            log.warning("LLM distractors unavailable, using rule-based ones: %s", e)
            if self.failures_in_row >= self.max_failures:
                self.disabled = True
                log.warning("LLM failed %d times in a row; rule-based distractors for the rest "
                            "of this run", self.failures_in_row)
            return None
        self.failures_in_row = 0
        return parse_options(reply)[: max(n * 2, n)]


# ---------------------------------------------------------------------------------------------
# Command line: the options every question-making command takes


def add_llm_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LLM distractors (optional; rule-based distractors otherwise)")
    g.add_argument("--llm-base-url", help="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    g.add_argument("--llm-model", help="model name to request")
    g.add_argument("--llm-api-key-env", metavar="VAR",
                   help="name of the environment variable holding the API key (never the key)")
    g.add_argument("--llm-timeout", type=float, default=30.0, help="seconds per request")


def llm_from_args(args: argparse.Namespace) -> LLMDistractors | None:
    """The LLM helper the options ask for, or None. Raises ValueError on half-given options."""
    if not args.llm_base_url and not args.llm_model:
        return None
    if not (args.llm_base_url and args.llm_model):
        raise ValueError("--llm-base-url and --llm-model go together")
    return LLMDistractors(ChatClient(args.llm_base_url, args.llm_model, args.llm_api_key_env,
                                     timeout=args.llm_timeout))

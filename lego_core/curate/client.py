"""The LLM client: the openai package's AsyncOpenAI with our own retries, budgets and accounting.

The openai client's own retries are off (``max_retries=0``) so that ours are the only ones and every
request sent is counted against ``--max-requests``. A request is retried with exponential backoff
and jitter on 429, 408/409, 5xx, timeouts, connection errors and malformed responses, waiting what
the server asks for in ``retry-after-ms`` / ``Retry-After`` when it says. What retrying cannot fix
ends the run (bad key, unknown model, quota used up, server down after every retry): the answers
already accepted stay in the cache, so a rerun continues. A request the server refuses for this
sample alone (400, 413, 422) rejects that sample, except while the server has accepted nothing: when
the first requests of a run are all refused (``REFUSED_UNTIL_FATAL`` of them, or every request of a
shorter run) the refusal is taken as the server rejecting the request itself (an option or model it
does not support) and the run ends with exit 2 quoting the server's message.

The API key lives only in the openai client object: it is never logged, printed or written, and
`redact` scrubs it from any server message we pass on (some servers echo the key back).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import re
import time
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any, Mapping

from lego_core.errors import BadInput, LegoError

log = logging.getLogger("lego.curate")

OPENAI_URL = "https://api.openai.com/v1"
NO_KEY = "sk-no-key-required"    # sent to servers that need no key (vLLM, llama.cpp, Ollama)

# A server that rejects the request itself (e.g. OpenAI's 400 "Unsupported parameter: 'max_tokens'"
# for newer models, or a FastAPI server's 422 for an option it does not know) refuses every sample
# alike; taking each refusal as a per-sample reject would end the run with exit 0 and nothing
# curated. So refusals (400, 413, 422, ...) before any accepted request are counted, and this many
# end the run (exit 2). Five, not one: a sample can be refused on its own merits (too long for the
# context); once one request has been accepted, a refusal is that sample's alone.
REFUSED_UNTIL_FATAL = 5

_SECRETS: set[str] = set()
_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{2})[A-Za-z0-9_\-*]{6,}")


def register_secret(secret: str | None) -> None:
    if secret and len(secret) >= 4 and secret != NO_KEY:
        _SECRETS.add(secret)


def redact(text: Any) -> str:
    """``text`` with every registered secret and anything shaped like an OpenAI key masked."""
    s = str(text)
    for secret in _SECRETS:
        s = s.replace(secret, "***")
    return _KEY_LIKE.sub(r"\1***", s)


def quiet_http_loggers() -> None:
    """The openai/httpx loggers log request options at DEBUG; keep them out of ``--debug`` output."""
    for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --- errors ---------------------------------------------------------------------------------


class Stopped(Exception):
    """A budget (``--max-requests``, ``--max-tokens-total``) or a fatal error elsewhere stopped the run."""


class SampleFailed(Exception):
    """The server refused the request for this sample (e.g. HTTP 400): reject the sample."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


# --- settings -------------------------------------------------------------------------------


@dataclass
class RetryPolicy:
    max_retries: int = 6            # transport retries per request (after the first try)
    base_delay: float = 1.0         # backoff: base * 2**retry, +-50 % jitter, at most max_delay
    max_delay: float = 60.0
    max_retry_after: float = 600.0  # never wait longer than this whatever Retry-After says

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        rng = rng or random
        if retry_after is not None and not math.isnan(retry_after):   # NaN would make every min/max NaN
            wait = min(max(retry_after, 0.0), self.max_retry_after)
            return wait + rng.uniform(0, min(0.1 * wait, self.base_delay))
        cap = min(self.max_delay, self.base_delay * (2 ** retry))
        return cap / 2 + rng.uniform(0, cap / 2)


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, ``Retry-After`` (seconds or an HTTP
    date); None when it says nothing usable."""
    if not headers:
        return None
    get = headers.get
    ms = get("retry-after-ms")
    if ms is not None:
        try:
            wait = _seconds(float(ms) / 1000.0)
            if wait is not None:
                return wait
        except ValueError:
            pass
    ra = get("retry-after")
    if ra is None:
        return None
    try:
        return _seconds(float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        # parsedate_to_datetime returns a naive datetime for the zone "-0000" (RFC 5322: UTC, but
        # local time unknown); .timestamp() would read it as *local* time, off by the machine's UTC
        # offset (hours of waiting). HTTP dates are always UTC (RFC 9110).
        when = when.replace(tzinfo=timezone.utc)
    return _seconds(when.timestamp() - (time.time() if now is None else now))


def _seconds(s: float) -> float | None:
    """A wait of ``s`` seconds, at least 0; None for NaN/inf ("nan" parses as a float, and
    asyncio.sleep(nan) would not wait at all)."""
    return max(s, 0.0) if math.isfinite(s) else None


@dataclass
class Usage:
    """What the run has spent: requests sent (every try), and tokens the server reported."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    responses_without_usage: int = 0
    retry_reasons: dict = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Budget:
    """Shared by every request: counts spending, says when to stop starting new requests."""

    def __init__(self, max_requests: int | None = None, max_tokens_total: int | None = None):
        self.max_requests = max_requests
        self.max_tokens_total = max_tokens_total
        self.usage = Usage()
        self.stopped: str | None = None
        self.fatal: LegoError | None = None

    def stop(self, reason: str, fatal: LegoError | None = None) -> None:
        if self.stopped is None:
            self.stopped = reason
        if fatal is not None and self.fatal is None:
            self.fatal = fatal

    def take(self) -> None:
        """Reserve one request, or raise `Stopped`."""
        if self.stopped is None:
            if self.max_requests is not None and self.usage.requests >= self.max_requests:
                self.stop(f"--max-requests {self.max_requests} reached")
            elif self.max_tokens_total is not None and self.usage.total_tokens >= self.max_tokens_total:
                self.stop(f"--max-tokens-total {self.max_tokens_total} reached")
        if self.stopped is not None:
            raise Stopped(self.stopped)
        self.usage.requests += 1

    def count_tokens(self, usage: Any) -> dict:
        if usage is None:
            self.usage.responses_without_usage += 1
            return {}
        p = int(getattr(usage, "prompt_tokens", 0) or 0)
        c = int(getattr(usage, "completion_tokens", 0) or 0)
        self.usage.prompt_tokens += p
        self.usage.completion_tokens += c
        return {"prompt_tokens": p, "completion_tokens": c}


@dataclass
class Completion:
    text: str | None
    finish_reason: str | None
    refusal: str | None
    usage: dict


# --- the client -----------------------------------------------------------------------------


class LLMClient:
    """``await client.complete(request)`` -> `Completion`, retrying what is worth retrying."""

    def __init__(self, *, api_key: str, base_url: str | None, timeout: float, concurrency: int,
                 policy: RetryPolicy, budget: Budget, seed: int | None = None):
        from openai import AsyncOpenAI
        from openai.types.chat import ChatCompletion

        self._completion_type = ChatCompletion
        register_secret(api_key)
        quiet_http_loggers()
        self._client = AsyncOpenAI(api_key=api_key, base_url=base_url or OPENAI_URL, max_retries=0, timeout=timeout)
        self.base_url = public_url(base_url or OPENAI_URL)    # what messages show: no credentials
        self.policy = policy
        self.budget = budget
        self.slots = asyncio.Semaphore(concurrency)
        self._rng = random.Random(seed)
        self.accepted = 0                    # completions the server answered (2xx) in this run
        self.refused = 0                     # refusals (4xx) while nothing was accepted yet
        self._first_refusal: tuple[int, str] | None = None

    def refused_everything(self) -> BadInput | None:
        """The error that ends the run when the server has refused requests (at least one) and
        accepted none; None otherwise. Raised at the ``REFUSED_UNTIL_FATAL``-th refusal, and for a
        shorter run checked at its end."""
        if self.accepted or not self.refused or self._first_refusal is None:
            return None
        status, message = self._first_refusal
        message = " ".join(message.split())          # one line, whatever the server sent
        if len(message) > 300:
            message = message[:297] + "..."
        which = f"the first {self.refused}" if self.refused >= REFUSED_UNTIL_FATAL else f"all {self.refused}"
        return BadInput(f"the server at {self.base_url} refused {which} requests (HTTP {status}) and accepted "
                        f"none: \"{message}\"; it refuses the request, not the samples: check --llm and the "
                        f"options sent with it (--max-tokens, --temperature, --top-p, --seed) against what "
                        f"the server supports")

    async def close(self) -> None:
        await self._client.close()

    async def complete(self, request: Mapping[str, Any], *, what: str = "") -> Completion:
        """One answer for ``request`` (the create() keyword arguments). Raises `Stopped`,
        `SampleFailed`, or a `LegoError` that ends the run."""
        import openai

        retry = 0
        while True:
            self.budget.take()
            retry_after = None
            try:
                # client.post (the openai package's documented way to send a raw body) instead of
                # chat.completions.create: same auth, errors and parsing, but it skips the
                # per-call re-typing of the ~20 messages, which cost ~5 ms of CPU per request
                # and capped the throughput at high concurrency. The request is plain JSON already.
                resp = await self._client.post("/chat/completions", body=dict(request),
                                               cast_to=self._completion_type)
                choice = resp.choices[0]
                message = choice.message
                result = Completion(
                    text=message.content, finish_reason=choice.finish_reason,
                    refusal=getattr(message, "refusal", None),
                    usage=self.budget.count_tokens(getattr(resp, "usage", None)),
                )
                self.accepted += 1
                return result
            except openai.APITimeoutError:
                why = "timeout"
            except openai.APIConnectionError:
                why = "connection error"
            except openai.APIStatusError as e:
                status = e.status_code
                body_code = _error_code(e)
                if status == 429 and body_code == "insufficient_quota":
                    raise LegoError("the API account's quota is used up (HTTP 429 insufficient_quota); "
                                    "answers so far are cached, rerun to continue") from None
                if status == 401:
                    raise BadInput(f"the server at {self.base_url} rejected the API key (HTTP 401): "
                                   "check OPENAI_API_KEY") from None
                if status == 403:
                    raise BadInput(f"the server at {self.base_url} refused access (HTTP 403): "
                                   f"{redact(_message(e))}") from None
                if status == 404:
                    raise BadInput(f"model {request.get('model')!r} or the chat endpoint was not found at "
                                   f"{self.base_url} (HTTP 404): check --llm and --base-url") from None
                if status in (408, 409, 429) or status >= 500:
                    why = f"HTTP {status}"
                    retry_after = parse_retry_after(e.response.headers)
                else:
                    detail = redact(_message(e))
                    if not self.accepted:
                        self.refused += 1
                        if self._first_refusal is None:
                            self._first_refusal = (status, detail)
                        if self.refused >= REFUSED_UNTIL_FATAL:
                            raise self.refused_everything() from None
                    raise SampleFailed(f"request refused (HTTP {status})", detail) from None
            except (ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
                # a 200 whose body is not a chat completion (bad JSON, no choices)
                why = "malformed response"
                log.debug("malformed response for %s: %s", what, redact(e))
            reasons = self.budget.usage.retry_reasons
            reasons[why] = reasons.get(why, 0) + 1
            if retry >= self.policy.max_retries:
                raise LegoError(f"{self.base_url}: {why} on {retry + 1} tries in a row "
                                f"(last for {what or 'a sample'}); answers so far are cached, rerun to continue")
            wait = self.policy.delay(retry, retry_after, self._rng)
            log.debug("%s for %s: retry %d in %.2fs%s", why, what, retry + 1, wait,
                      " (Retry-After)" if retry_after is not None else "")
            self.budget.usage.retries += 1
            retry += 1
            await asyncio.sleep(wait)


def _message(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(e, "message", e))


def _error_code(e: Exception) -> str | None:
    code = getattr(e, "code", None)
    if code:
        return str(code)
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return err.get("code") or err.get("type")
    return None


def public_url(url: str | None) -> str | None:
    """``url`` fit to print or write: user:password@ and query values masked (``***``)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if not url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        query = urlencode([(k, "***") for k, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "(an unparsable URL)"


def _is_loopback(host: str | None) -> bool:
    import ipaddress

    if not host:
        return False
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(base_url: str | None, environ: Mapping[str, str], *, allow_insecure_http: bool = False) -> str:
    """The key from OPENAI_API_KEY; a placeholder for a local server that needs none. A key (or
    credentials in the URL) is never sent in clear text to another machine: plain http to a
    non-loopback host is refused unless ``allow_insecure_http``."""
    from urllib.parse import urlsplit

    key = environ.get("OPENAI_API_KEY", "").strip()
    parts = urlsplit(base_url) if base_url else None
    if parts is not None:
        register_secret(parts.password)
        if (key or parts.password) and parts.scheme == "http" and not _is_loopback(parts.hostname) \
                and not allow_insecure_http:
            raise BadInput(f"--base-url {public_url(base_url)} is plain http to another machine: the API key would "
                           "travel unencrypted; use https, unset OPENAI_API_KEY for a keyless server, or pass "
                           "--allow-insecure-http")
    if key:
        return key
    if not base_url or "api.openai.com" in base_url:
        raise BadInput("OPENAI_API_KEY is not set: export it, or point --base-url at a server that needs no "
                       "key, or use --backend template (offline, not the paper's method)")
    return NO_KEY

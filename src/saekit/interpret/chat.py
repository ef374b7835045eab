"""Language models that write and judge explanations: a local causal LM, or a chat endpoint.

Both clients answer the same two requests, so the explanation pipeline does not care which
one it holds:

* ``complete(prompts, max_tokens)``: a reply to each chat (a list of role/content
  messages), with the prompt and completion tokens it cost;
* ``judge(prompts)``: a yes/no verdict on each chat, with the model's probability of "yes"
  where it gives one: a local model's next-token logits over the yes and no tokens; an
  endpoint's logprobs when it returns them.

``LocalChat`` runs any model ``saekit.models.load_model`` loads, greedily, through its chat
template, batched with left padding. ``EndpointChat`` speaks the OpenAI chat-completions
protocol (vLLM, llama.cpp's server, OpenAI itself) over ``urllib``: it retries with backoff
on 429, 5xx, timeouts and malformed replies, then raises one ``EndpointError`` naming the
endpoint and what it answered.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ..errors import ConfigError, EndpointError, PromptTooLongError
from .explanation_scoring import Verdict

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]

API_KEY_VARIABLES = ("SAEKIT_API_KEY", "OPENAI_API_KEY")
"""Where an endpoint's key is read from, first one set wins (never from a flag: flags end up
in shell histories and process listings)."""

EMBEDDED_LABEL = "SmolLM2-135M-Instruct (local)"


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


class ChatClient(Protocol):
    label: str  # what explanation records name as the explainer or scorer
    context_limit: int | None  # tokens a prompt plus its answer may take; None: unknown (an endpoint)

    def complete(self, prompts: Sequence[Messages], *, max_tokens: int, temperature: float = 0.0,
                 seed: int = 0) -> list[Completion]: ...

    def judge(self, prompts: Sequence[Messages]) -> list[Verdict]: ...

    def count_tokens(self, messages: Messages) -> int | None: ...


def canonical_model_name(name: str | os.PathLike[str] | None) -> str:
    """The name ``load_model`` gives a model (``LoadedModel.name``), worked out without loading it."""
    from ..models import EMBEDDED_MODEL

    if name is None or str(name) == EMBEDDED_MODEL:
        return EMBEDDED_MODEL
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else str(name)


def local_label(name: str | os.PathLike[str] | None) -> str:
    """How records name a local model as explainer or scorer (what ``LocalChat.label`` will be)."""
    from ..models import EMBEDDED_MODEL

    canonical = canonical_model_name(name)
    return EMBEDDED_LABEL if canonical == EMBEDDED_MODEL else f"{canonical} (local)"


def same_model(name: str | os.PathLike[str] | None, loaded_name: str) -> bool:
    """Whether loading ``name`` would give the model already loaded as ``loaded_name``."""
    return canonical_model_name(name) == loaded_name


def parse_yes_no(text: str) -> bool | None:
    """True for a reply that starts with yes, False for no, None for anything else."""
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        return None
    return True if words[0] == "yes" else False if words[0] == "no" else None


# ------------------------------------------------------------------ a local causal LM
class LocalChat:
    """A causal LM loaded by saekit, answering greedily through its chat template.

    Prompts are batched ``batch_size`` at a time, left-padded so that every row's answer
    starts at the same position. A tokenizer without a chat template (a bare base model)
    gets a plain "User: … Assistant:" transcript.
    """

    def __init__(self, lm: Any, *, label: str | None = None, batch_size: int = 8):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.lm, self.batch_size = lm, batch_size
        self.label = label or local_label(lm.name)
        self.context_limit: int | None = lm.max_length
        tok = lm.tokenizer
        self.templated = bool(getattr(tok, "chat_template", None))
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.stop_ids = {i for i in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")
                                     if "<|im_end|>" in tok.get_vocab() else None) if i is not None}
        self.yes_ids, self.no_ids = _answer_token_ids(tok)

    def _text(self, messages: Messages) -> str:
        if self.templated:
            return self.lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join(turns) + "\n\nAssistant:"

    def _ids(self, messages: Messages) -> list[int]:
        # A chat template writes its special tokens into the text; a plain transcript gets the
        # tokenizer's own (BOS where it adds one).
        encoded = self.lm.tokenizer(self._text(messages), add_special_tokens=not self.templated)
        return list(encoded["input_ids"])

    def count_tokens(self, messages: Messages) -> int | None:
        return len(self._ids(messages))

    def _check_fits(self, ids: list[int], room: int) -> None:
        if self.context_limit is not None and len(ids) + room > self.context_limit:
            raise PromptTooLongError(f"a prompt of {len(ids)} tokens (plus {room} for the answer) does not fit "
                                     f"{self.label}'s context of {self.context_limit} tokens")

    def _batch(self, rows: list[list[int]]) -> tuple[Any, Any, Any]:
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        # Left padding shifts each row; positions count from the row's first real token.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = self.lm.device
        return ids.to(device), mask.to(device), positions.to(device)

    def complete(self, prompts: Sequence[Messages], *, max_tokens: int, temperature: float = 0.0,
                 seed: int = 0) -> list[Completion]:
        import torch

        rows = [self._ids(m) for m in prompts]
        for row in rows:
            self._check_fits(row, max_tokens)
        out: list[Completion] = []
        for chunk in self._chunks(rows):
            ids, mask, _ = self._batch(chunk)
            sampling = temperature > 0
            if sampling:
                torch.manual_seed(seed)
            with torch.no_grad():
                generated = self.lm.model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=sampling,
                    temperature=temperature if sampling else None, top_p=None, top_k=None,
                    pad_token_id=self.pad_id, eos_token_id=sorted(self.stop_ids) or None)
            for row, new in zip(chunk, generated[:, ids.shape[1]:].tolist()):
                kept = []
                for token in new:
                    if token in self.stop_ids:
                        break
                    kept.append(token)
                spent = min(len(kept) + 1, len(new))  # the stop token was generated too
                text = self.lm.tokenizer.decode(kept, skip_special_tokens=True)
                out.append(Completion(text=text, prompt_tokens=len(row), completion_tokens=spent))
        return self._unsort(out, rows)

    def _order(self, rows: list[list[int]]) -> list[int]:
        # Batching prompts of like length wastes less on padding.
        return sorted(range(len(rows)), key=lambda i: len(rows[i]))

    def _chunks(self, rows: list[list[int]]) -> list[list[list[int]]]:
        ordered = [rows[i] for i in self._order(rows)]
        return [ordered[s:s + self.batch_size] for s in range(0, len(ordered), self.batch_size)]

    def _unsort(self, answers: list[Any], rows: list[list[int]]) -> list[Any]:
        """Answers given in length order, put back in the prompts' order."""
        out: list[Any] = [None] * len(rows)
        for position, index in enumerate(self._order(rows)):
            out[index] = answers[position]
        return out

    def judge(self, prompts: Sequence[Messages]) -> list[Verdict]:
        import torch

        rows = [self._ids(m) for m in prompts]
        for row in rows:
            self._check_fits(row, 1)
        yes = torch.tensor(self.yes_ids)
        no = torch.tensor(self.no_ids)
        verdicts: list[Verdict] = []
        for chunk in self._chunks(rows):
            ids, mask, positions = self._batch(chunk)
            with torch.no_grad():
                logits = self.lm.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            logits = logits.float().cpu()
            # P(yes) among the yes and no answers: the model's odds between the two, whatever
            # else it might have said.
            margin = torch.logsumexp(logits[:, yes], -1) - torch.logsumexp(logits[:, no], -1)
            for row, p in zip(chunk, torch.sigmoid(margin).tolist()):
                p = min(1.0, max(0.0, float(p)))
                verdicts.append(Verdict(answer=p >= 0.5, p_yes=p, prompt_tokens=len(row), completion_tokens=1))
        return self._unsort(verdicts, rows)


def _answer_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The first token of each way of writing yes and no (with and without a leading space,
    capitalised or not), those both could start with removed: with a byte-level tokenizer
    " Yes" and " No" share their first token, which says nothing."""
    def first_tokens(words: Sequence[str]) -> set[int]:
        found = set()
        for word in words:
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if ids:
                found.add(int(ids[0]))
        return found

    yes = first_tokens(["Yes", " Yes", "yes", " yes", "YES"])
    no = first_tokens(["No", " No", "no", " no", "NO"])
    shared = yes & no
    yes, no = yes - shared, no - shared
    if not yes or not no:
        raise ConfigError("the scorer's tokenizer cannot tell an answer of yes from no by its first token")
    return sorted(yes), sorted(no)


# ------------------------------------------------------------------ an OpenAI-compatible endpoint
def chat_completions_url(url: str) -> str:
    """The chat-completions address of a server given as its root, its /v1, or the full path."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/]+", url):
        raise ConfigError(f"endpoint {url!r} is not an http(s) URL; give e.g. http://localhost:8000/v1")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def api_key_from_environment() -> str | None:
    for name in API_KEY_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return None


class _Retry(Exception):
    """One failed attempt worth repeating; its text says what the endpoint answered."""


class EndpointChat:
    """An OpenAI-compatible ``/v1/chat/completions`` server, called once per prompt.

    ``retries`` further attempts follow a 429, a 5xx, a timeout, a refused connection or a
    reply that is not the protocol's JSON, ``backoff`` · 2^attempt seconds apart (or the
    server's Retry-After, up to 60 s); other 4xx answers (a bad key, an unknown model) are
    not retried. Then one EndpointError names the endpoint and its last answer.
    """

    def __init__(self, url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 1.0, concurrency: int = 4,
                 sleep: Callable[[float], None] = time.sleep):
        if not model:
            raise ConfigError(f"an endpoint needs a model name (the one {url} serves it under)")
        if timeout <= 0 or retries < 0 or backoff < 0 or concurrency < 1:
            raise ConfigError("an endpoint's timeout and concurrency must be positive, and retries and backoff "
                              "not negative")
        self.concurrency = concurrency
        self._given_up = threading.Event()  # set when one request of a batch failed for good
        self._reason = ""  # and why
        self.url = chat_completions_url(url)
        self.model, self.api_key = model, api_key
        self.timeout, self.retries, self.backoff, self.sleep = timeout, retries, backoff, sleep
        # The model, not the address: a server restarted on another port serves the same
        # explanations, and a rerun against it must continue the file.
        self.label = f"{model} (endpoint)"
        self.context_limit: int | None = None
        self.logprobs = True  # asked for until the server refuses them

    def count_tokens(self, messages: Messages) -> int | None:
        return None  # the server's tokenizer is not known here

    def complete(self, prompts: Sequence[Messages], *, max_tokens: int, temperature: float = 0.0,
                 seed: int = 0) -> list[Completion]:
        def one(messages: Messages) -> Completion:
            reply = self._ask({"messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                               "seed": seed})
            prompt_tokens, completion_tokens = _usage(reply)
            return Completion(text=_content(reply), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

        return self._each(one, prompts)

    def _each(self, ask: Callable[[Messages], Any], prompts: Sequence[Messages]) -> list[Any]:
        """``ask`` for every prompt, ``concurrency`` requests in flight (servers batch them),
        answers in the prompts' order; the first request that fails for good raises."""
        self._given_up.clear()
        if self.concurrency == 1 or len(prompts) < 2:
            return [ask(m) for m in prompts]
        from concurrent.futures import ThreadPoolExecutor

        def guarded(messages: Messages) -> Any:
            if self._given_up.is_set():
                raise EndpointError(self._reason)
            try:
                return ask(messages)
            except BaseException as e:
                # The others stop retrying (a dead server would otherwise keep each of them
                # backing off for a minute) and those queued never start.
                self._reason = str(e)
                self._given_up.set()
                raise

        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)))
        try:
            return list(pool.map(guarded, prompts))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def judge(self, prompts: Sequence[Messages]) -> list[Verdict]:
        return self._each(self._judge_one, prompts)

    def _judge_one(self, messages: Messages) -> Verdict:
        body: dict[str, Any] = {"messages": messages, "max_tokens": 3, "temperature": 0.0}
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=10)
        try:
            reply = self._ask(body)
        except EndpointError as e:
            if not self.logprobs or "logprob" not in str(e).lower():
                raise
            logger.warning("%s refuses logprobs; scoring from its answers alone", self.url)
            self.logprobs = False
            reply = self._ask({k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")})
        prompt_tokens, completion_tokens = _usage(reply)
        return Verdict(answer=parse_yes_no(_content(reply)), p_yes=_p_yes(reply),
                       prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    def _ask(self, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps({"model": self.model, **body}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                if self._given_up.is_set():
                    raise EndpointError(self._reason)
                self.sleep(self._wait(attempt, last))
            try:
                return self._attempt(payload, headers)
            except _Retry as e:
                last = str(e)
                logger.info("%s: %s (attempt %d of %d)", self.url, last, attempt + 1, self.retries + 1)
        raise EndpointError(f"the endpoint {self.url} failed {self.retries + 1} times; its last answer: {last}. "
                            "Check that the server is up and serves the model, or retry later")

    def _wait(self, attempt: int, last: str) -> float:
        match = re.search(r"retry-after (\d+(?:\.\d+)?)", last)
        if match:
            return min(60.0, float(match.group(1)))
        return self.backoff * 2 ** (attempt - 1)

    def _attempt(self, payload: bytes, headers: dict[str, str]) -> dict[str, Any]:
        request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            text = _excerpt(e.read() if e.fp is not None else b"")
            if e.code == 429 or e.code >= 500:
                after = e.headers.get("Retry-After") if e.headers else None
                hint = f", retry-after {after}" if after and after.replace(".", "", 1).isdigit() else ""
                raise _Retry(f"HTTP {e.code} {text}{hint}") from None
            how = (" (set SAEKIT_API_KEY or OPENAI_API_KEY to the server's key)" if e.code in (401, 403) else "")
            raise EndpointError(f"the endpoint {self.url} refused the request: HTTP {e.code} {text}{how}") from None
        except (socket.timeout, TimeoutError):
            raise _Retry(f"no answer within {self.timeout:g} s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (socket.timeout, TimeoutError)):
                raise _Retry(f"no answer within {self.timeout:g} s") from None
            raise _Retry(f"cannot connect ({e.reason})") from None
        except (ConnectionError, OSError) as e:
            raise _Retry(f"the connection failed ({e})") from None
        try:
            reply = json.loads(raw)
            _content(reply)
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retry(f"a reply that is not chat-completions JSON: {_excerpt(raw)}") from None
        return reply


def _excerpt(raw: bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace").strip().replace("\n", " ")
    return repr(text[:limit] + ("…" if len(text) > limit else "")) if text else "(empty body)"


def _content(reply: dict[str, Any]) -> str:
    content = reply["choices"][0]["message"]["content"]
    if content is None:
        return ""
    if not isinstance(content, str):
        raise TypeError("content is not text")
    return content


def _usage(reply: dict[str, Any]) -> tuple[int, int]:
    usage = reply.get("usage") or {}
    try:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return 0, 0


def _p_yes(reply: dict[str, Any]) -> float | None:
    """P(yes) among yes and no in the first answer token's top logprobs; None where the
    reply has none or neither word is among them."""
    try:
        first = reply["choices"][0]["logprobs"]["content"][0]
        candidates = first.get("top_logprobs") or [first]
        yes = no = 0.0
        for c in candidates:
            word = parse_yes_no(str(c["token"]))
            if word is True:
                yes += math.exp(float(c["logprob"]))
            elif word is False:
                no += math.exp(float(c["logprob"]))
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return yes / (yes + no) if yes + no > 0 else None

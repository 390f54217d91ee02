"""`charrnn serve`: one model behind a small HTTP JSON API and a page to play with it.

- `GET /`: the page (charrnn/serve_page.html): a prompt, sampling sliders, the text
  streaming in, and any text shaded by surprisal or by one unit's activation.
- `GET /api/info`: what the checkpoint holds (as `charrnn info --json`) and the limits.
- `POST /api/generate`: `{"prefix", "length", "temperature", "top_k", "top_p", "greedy",
  "seed"}` (all optional) -> the continuation as UTF-8 text, streamed as it is sampled.
- `POST /api/eval`: `{"text", "neuron"}` -> perplexity, each character's surprisal, and
  the colour and tooltip the page shades each character with.

A bad request (malformed JSON, an unknown field or a wrong type, characters outside the
vocabulary, a text or length over the limits) gets a 4xx and `{"error": "one line"}`. The
model is the one given on the command line: no request names a file. The model's work runs
in worker threads, one request each, so a slow client or a long generation does not hold
up the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from charrnn.config import SAMPLING
from charrnn.errors import CharrnnError
from charrnn.model import RNNLMScratch
from charrnn.inspection.neurons import ACTIVATION_SHADES, activation_level, parse_unit, unit_activations
from charrnn.generation.sample import GenerationStream
from charrnn.inspection.surprisal import SHADES, checkpoint_info, mean_perplexity, shade_level, surprisal
from charrnn.corpus.text import normalize
from charrnn.corpus.vocab import Vocab


@dataclass
class Limits:
    max_length: int = 2000  # characters one generate request may ask for
    max_text: int = 10_000  # characters of a prefix or of a text to evaluate


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# field -> (accepted types, default); bool is not an int here, though Python says it is
GENERATE_FIELDS = {"prefix": ((str,), ""), "length": ((int,), SAMPLING.length),
                   "temperature": ((int, float), SAMPLING.temperature), "top_k": ((int,), SAMPLING.top_k),
                   "top_p": ((int, float), SAMPLING.top_p), "greedy": ((bool,), SAMPLING.greedy),
                   "seed": ((int, type(None)), SAMPLING.seed)}
EVAL_FIELDS = {"text": ((str,), None), "neuron": ((str, type(None)), None)}


async def read_fields(request: Request, fields: dict, max_bytes: int) -> dict:
    """The request's JSON object, checked against `fields`, with defaults filled in; a body
    over max_bytes is refused as it arrives, not after it has all been read."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BadRequest(f"the body is over {max_bytes:,} bytes", 413)
    try:
        body = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; known: {', '.join(fields)}")
    values = {}
    for name, (types, default) in fields.items():
        value = body.get(name, default)
        if value is None and type(None) not in types:
            raise BadRequest(f"'{name}' is required")
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadRequest(f"'{name}' must be {' or '.join(t.__name__ for t in types)}, got {json.dumps(value)}")
        values[name] = value
    return values


def create_app(model: RNNLMScratch, vocab: Vocab, ckpt: dict, checkpoint_name: str,
               limits: Limits | None = None) -> Starlette:
    """The web app for one loaded model."""
    limits = limits or Limits()
    normalize_how = (ckpt.get("corpus") or {}).get("normalize", "none")
    info = {**checkpoint_info(ckpt, checkpoint_name), "limits": vars(limits)}
    page = resources.files("charrnn").joinpath("serve_page.html").read_text(encoding="utf-8")
    # a JSON string may spend up to 12 bytes on a character (a surrogate pair as \u escapes)
    max_bytes = 12 * limits.max_text + 4096

    def checked_text(text: str, what: str):
        if len(text) > limits.max_text:
            raise BadRequest(f"{what} has {len(text):,} characters; this server takes at most {limits.max_text:,}", 413)
        text = normalize(text, normalize_how)  # as the model saw its training text
        return text, vocab.encode(text, what)

    async def home(request: Request):
        return HTMLResponse(page)

    async def get_info(request: Request):
        return JSONResponse(info)

    async def generate(request: Request):
        fields = await read_fields(request, GENERATE_FIELDS, max_bytes)
        if not 0 <= fields["length"] <= limits.max_length:
            raise BadRequest(f"'length' must be 0 to {limits.max_length:,}, got {fields['length']}", 413)
        if fields["seed"] is not None and not 0 <= fields["seed"] < 2**63:
            raise BadRequest(f"'seed' must be 0 to 2**63 - 1, got {fields['seed']}")
        prefix, _ = checked_text(fields.pop("prefix"), "the prefix")
        length = fields.pop("length")

        def start():
            stream = GenerationStream(model, vocab, **fields)
            stream.feed(prefix)
            return stream.sample(length)

        steps = await run_in_threadpool(start)
        # a sync iterator: Starlette runs each step in a worker thread
        return StreamingResponse((chars[0] for chars in steps), media_type="text/plain; charset=utf-8")

    async def evaluate(request: Request):
        fields = await read_fields(request, EVAL_FIELDS, max_bytes)
        text, ids = checked_text(fields["text"], "the text")
        if len(text) < 2:
            raise BadRequest("the text needs at least 2 characters")
        unit = parse_unit(fields["neuron"], model) if fields["neuron"] else None
        return JSONResponse(await run_in_threadpool(shading, model, vocab, text, ids, unit))

    async def errors(request: Request, exc: Exception):
        status = exc.status if isinstance(exc, BadRequest) else 400
        return JSONResponse({"error": str(exc).splitlines()[0]}, status_code=status)

    async def http_errors(request: Request, exc: HTTPException):  # an unknown path, a GET for a POST
        return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}"},
                            status_code=exc.status_code)

    routes = [Route("/", home), Route("/api/info", get_info), Route("/api/generate", generate, methods=["POST"]),
              Route("/api/eval", evaluate, methods=["POST"])]
    return Starlette(routes=routes,
                     exception_handlers={BadRequest: errors, CharrnnError: errors, HTTPException: http_errors})


def shading(model: RNNLMScratch, vocab: Vocab, text: str, ids: torch.Tensor, unit) -> dict:
    """Surprisal of every character after the first, and how the page shades each character:
    by surprisal, or by the unit's activation."""
    bits = surprisal(model, vocab, text)
    result = {"text": text, "chars": len(text), "perplexity": mean_perplexity(bits),
              "bits_per_char": sum(bits) / len(bits), "surprisal": bits}
    if unit is None:
        levels = [shade_level(b) for b in bits]
        result["colours"] = [None] + [SHADES[level] for level in levels]
        result["tooltips"] = ["no prediction"] + [f"{b:.2f} bits" for b in bits]
    else:
        values = unit_activations(model, ids, unit)
        result.update(neuron=str(unit), activations=values,
                      colours=[ACTIVATION_SHADES[activation_level(v)] for v in values],
                      tooltips=[f"{unit}: {v:+.3f}" for v in values])
    return result

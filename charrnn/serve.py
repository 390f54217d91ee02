"""`charrnn serve`: one model behind a small HTTP JSON API and a page to play with it.

- `GET /`: the page (charrnn/serve_page.html): a prompt, sampling sliders, the text
  streaming in, and any text shaded by surprisal or by one unit's activation.
- `GET /api/info`: what the checkpoint holds (as `charrnn info --json`) and the limits.
- `POST /api/generate`: `{"prefix", "length", "temperature", "top_k", "top_p", "greedy",
  "seed"}` (all optional) -> the continuation as UTF-8 text, streamed as it is sampled.
- `POST /api/eval`: `{"text", "neuron"}` -> perplexity, each character's surprisal, and
  the colour and tooltip the page shades each character with.

A bad request (malformed JSON, an unknown field or a wrong type, a value out of range,
characters outside the vocabulary, a text or length over the limits) gets a 4xx and
`{"error": "one line"}` that names the JSON field; anything else that goes wrong in a
handler is logged with its traceback and gets a 500 with `{"error": ...}` too (never a bare
500). docs/reliability.md lists every answer. The model is the one given on the command
line: no request names a file. The model's work runs in worker threads, one request each,
so a slow client or a long generation does not hold up the others.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
from importlib import resources

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from charrnn.corpus.byte_vocab import char_bits, per_character
from charrnn.config import SAMPLING, ServeLimits
from charrnn.errors import CharrnnError
from charrnn.model import RNNLMScratch
from charrnn.inspection.neurons import ACTIVATION_SHADES, activation_level, parse_unit, unit_activations
from charrnn.generation.sample import GenerationStream
from charrnn.inspection.surprisal import SHADES, checkpoint_info, mean_perplexity, shade_level, surprisal
from charrnn.corpus.text import normalize
from charrnn.corpus.vocab import Vocab

log = logging.getLogger("charrnn.serve")


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


JSON_NAMES = ((str, "a string"), (float, "a number"), (int, "an integer"), (bool, "true or false"),
              (type(None), "null"))


def json_type(types: tuple) -> str:
    """The accepted Python types as JSON calls them: 'a number', 'a string or null'."""
    return " or ".join(name for python, name in JSON_NAMES
                       if python in types and not (python is int and float in types))


def shown(value) -> str:
    """A value as the request wrote it, cut short; an array or object by its kind alone."""
    if isinstance(value, (list, dict)):
        return "an array" if isinstance(value, list) else "an object"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def not_a_json_number(name: str):
    raise BadRequest(f"the body is not valid JSON: {name} is not a JSON number")


def parsed_body(body: bytes):
    """The JSON value of a body in UTF-8 (as JSON must be: json.loads would guess UTF-16 too)."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=not_a_json_number)
    except RecursionError:
        raise BadRequest("the body is nested too deeply to be a request") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise BadRequest(f"the body is not UTF-8: {e.reason} at byte {e.start}") from None
    except ValueError:  # Python refuses integers of over 4,300 digits
        raise BadRequest("the body has a number too long to read") from None


async def read_fields(request: Request, fields: dict, max_bytes: int) -> dict:
    """The request's JSON object, checked against `fields`, with defaults filled in; a body
    over max_bytes is refused as it arrives, not after it has all been read."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BadRequest(f"the body is over {max_bytes:,} bytes", 413)
    body = parsed_body(body)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        named = ", ".join(name if len(name) <= 40 else name[:37] + "..." for name in unknown[:3])
        more = f" and {len(unknown) - 3:,} more" if len(unknown) > 3 else ""
        raise BadRequest(f"unknown field(s): {named}{more}; known: {', '.join(fields)}")
    values = {}
    for name, (types, default) in fields.items():
        if name not in body and default is None and type(None) not in types:
            raise BadRequest(f"'{name}' is required")
        value = body.get(name, default)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadRequest(f"'{name}' must be {json_type(types)}, got {shown(value)}")
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:  # JSON's \ud800 escapes can say what no text holds
                raise BadRequest(f"'{name}' is not text: a lone surrogate \\u{ord(value[e.start]):04x} "
                                 f"at character {e.start}") from None
        values[name] = value
    return values


def one_line(exc: Exception) -> str:
    """The exception's first line, as text JSON can carry (a lone surrogate as its escape)."""
    lines = str(exc).splitlines() or [""]
    return lines[0].encode("utf-8", "backslashreplace").decode("utf-8")


def finite(number) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer beyond any float
        return False


def check_generate(fields: dict, max_length: int) -> None:
    """The sampling values' ranges, in the API's words (GenerationStream's speak the CLI's)."""
    length, temperature, top_p, seed = (fields[name] for name in ("length", "temperature", "top_p", "seed"))
    if length > max_length:
        raise BadRequest(f"'length' must be 0 to {max_length:,} on this server, got {shown(length)}", 413)
    ranges = [("length", length >= 0, f"0 to {max_length:,}"),
              ("temperature", finite(temperature) and temperature >= 0, "a finite number >= 0"),
              ("top_k", fields["top_k"] >= 0, "0 (no limit) or more"),
              ("top_p", 0 < top_p <= 1, "a number in (0, 1]"),
              ("seed", seed is None or 0 <= seed < 2**63, "null or 0 to 2**63 - 1")]
    for name, good, requirement in ranges:
        if not good:
            raise BadRequest(f"'{name}' must be {requirement}, got {shown(fields[name])}")
    fields["temperature"], fields["top_p"] = float(temperature), float(top_p)  # 2**64 is a number, but not to torch


def json_errors(endpoint):
    """An endpoint whose unexpected exception is logged with its traceback and answered with
    a 500 and {"error": ...}, never a bare 500; a user's mistake goes on to `errors`."""

    @functools.wraps(endpoint)
    async def answered(request: Request):
        try:
            return await endpoint(request)
        except (BadRequest, CharrnnError, HTTPException):
            raise
        except Exception as e:  # noqa: BLE001 - a bug: the client gets JSON, the log the traceback
            log.error("%s %s failed", request.method, request.url.path, exc_info=e)
            return JSONResponse({"error": f"internal error, logged by the server: {type(e).__name__}: {one_line(e)}"},
                                status_code=500)

    return answered


def create_app(model: RNNLMScratch, vocab: Vocab, ckpt: dict, checkpoint_name: str,
               limits: ServeLimits | None = None) -> Starlette:
    """The web app for one loaded model."""
    limits = limits or ServeLimits()
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
        check_generate(fields, limits.max_length)
        prefix, _ = checked_text(fields.pop("prefix"), "the prefix")
        length = fields.pop("length")

        def start():  # up to the first character: what fails here is still an answer of its own
            stream = GenerationStream(model, vocab, **fields)
            stream.feed(prefix)
            steps = stream.sample(length)
            return itertools.chain(list(itertools.islice(steps, 1)), steps)

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
        return JSONResponse({"error": one_line(exc)}, status_code=status)

    async def http_errors(request: Request, exc: HTTPException):  # an unknown path, a GET for a POST
        return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}"},
                            status_code=exc.status_code)

    routes = [Route("/", json_errors(home)), Route("/api/info", json_errors(get_info)),
              Route("/api/generate", json_errors(generate), methods=["POST"]),
              Route("/api/eval", json_errors(evaluate), methods=["POST"])]
    return Starlette(routes=routes,
                     exception_handlers={BadRequest: errors, CharrnnError: errors, HTTPException: http_errors})


def shading(model: RNNLMScratch, vocab: Vocab, text: str, ids: torch.Tensor, unit) -> dict:
    """Surprisal of every character after the first, and how the page shades each character:
    by surprisal, or by the unit's activation. A byte model's figures are per byte; its
    surprisal and activations are given per character (the bits of the character's bytes,
    the unit after its last byte), as the page shades characters."""
    bits = surprisal(model, vocab, text)
    result = {"text": text, "chars": len(text), "perplexity": mean_perplexity(bits)}
    if vocab.kind == "bytes":
        result.update(bytes=len(ids), bits_per_byte=sum(bits) / len(bits))
        bits = char_bits(text, bits)
    result.update(bits_per_char=sum(bits) / len(bits), surprisal=bits)
    if unit is None:
        levels = [shade_level(b) for b in bits]
        result["colours"] = [None] + [SHADES[level] for level in levels]
        result["tooltips"] = ["no prediction"] + [f"{b:.2f} bits" for b in bits]
    else:
        values = unit_activations(model, ids, unit)
        if vocab.kind == "bytes":
            values = per_character(values, text)
        result.update(neuron=str(unit), activations=values,
                      colours=[ACTIVATION_SHADES[activation_level(v)] for v in values],
                      tooltips=[f"{unit}: {v:+.3f}" for v in values])
    return result

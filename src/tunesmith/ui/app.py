"""The HTTP side of `tunesmith ui`: server-rendered pages (Jinja2), JSON for what they refresh, and a guard.

The guard answers only requests addressed to this server by name (a web page elsewhere cannot reach it through
a rebound DNS name), asks for the token when there is one, takes changes (POST) only as JSON from this
page's own origin, so another site open in the browser cannot start or stop a run, and counts each body as it
arrives, refusing one past MAX_BODY_BYTES before it is held whole.
"""

from __future__ import annotations

import hmac
import itertools
import json
import math
import mimetypes
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from ..errors import UserError
from ..report.assets import plotly_js
from ..rundir.folder import REPORT_HTML, is_run_dir
from ..serve.body import BodyTooLarge, ClientLeft, read_body, replay
from .launcher import Busy, Draft, Launcher, form_keys
from .runs import NotARun, Outside, RunsFolder, view_of
from .sweeps import sweep_detail, sweep_rows
from .tryout import Tryout

TOKEN_COOKIE = "tunesmith_ui_token"
TOKEN_VARIABLE = "TUNESMITH_UI_TOKEN"
ESSENTIALS = ("task", "model.name", "model.method", "data.train", "data.val", "data.block_size", "train.lr", "train.epochs",
              "train.max_steps", "train.micro_batch_size")  # the form shows these first; the rest fold away by section
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")
STATIC = Path(__file__).parent / "static"
FILES_POLICY = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"  # a served file never runs a script
MAX_BODY_BYTES = 1_000_000  # a form, a chat history: far less; a body past it is refused while it is read
SAME_SITE_PATH = re.compile(r"/(?![/\\])[^\\\x00-\x1f\x7f]*")  # one slash, then no slash, no backslash or control anywhere


def finite(value):
    """`value` with every NaN or infinity as None: a diverged run's figures are JSON the page can read, not a 500."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


class FiniteJSON(JSONResponse):
    def render(self, content) -> bytes:
        return json.dumps(finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


class Guard:
    """ASGI middleware: the Host check, the optional token (a header, a cookie, or ?token= once), and same-origin JSON POSTs."""

    def __init__(self, app, host: str, port: int, token: str | None, max_body: int = MAX_BODY_BYTES):
        self.app, self.token, self.max_body = app, token, max_body
        names = set(LOCAL_NAMES) | {host}
        self.any_host = host in ("0.0.0.0", "::")  # bound to every interface on purpose: the token is the guard then
        self.hosts = {f"{name}:{port}" for name in names} | names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if not self.any_host and host not in self.hosts:
            return await _refuse(scope, receive, send, 421, f"this server answers to {sorted(self.hosts)[0]}, not {host}")
        if self.token and not self._authorized(headers):
            given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
            if hmac.compare_digest(given.encode(), self.token.encode()):
                response = RedirectResponse(same_site(scope["path"]), status_code=303)
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
                return await response(scope, receive, send)
            return await _refuse(scope, receive, send, 401, "this page needs its token: open the address `tunesmith ui` printed")
        if scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc not in ({host} if self.any_host else self.hosts):
                return await _refuse(scope, receive, send, 403, "changes are taken only from this page itself")
            if not headers.get("content-type", "").startswith("application/json"):
                return await _refuse(scope, receive, send, 415, "changes are sent as JSON")
        try:
            body = await read_body(scope, receive, self.max_body)
        except BodyTooLarge as exc:
            return await _refuse(scope, receive, send, 413, str(exc))
        except ClientLeft:
            return None
        return await self.app(scope, replay(body, receive), send)

    def _authorized(self, headers: dict) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        cookies = dict(part.strip().split("=", 1) for part in headers.get("cookie", "").split(";") if "=" in part)
        candidates = [cookies.get(TOKEN_COOKIE, "")] + ([given.strip()] if scheme.lower() == "bearer" else [])
        return any(hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates if c)


def same_site(path: str) -> str:
    """Where the ?token= address leads on: its own path when that is a path of this site, else the runs page.

    "//evil.example" (or "/\\evil.example", which browsers read alike) would be another site's address."""
    return path if SAME_SITE_PATH.fullmatch(path) else "/"


async def _refuse(scope, receive, send, status: int, message: str) -> None:
    await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


def create_app(root: Path, host: str = "127.0.0.1", port: int = 7860, token: str | None = None, device: str = "auto",
               max_runs: int | None = None) -> Guard:
    """The page over the runs folder `root`; `max_runs` caps the trainings it runs at once (default: one per four cores)."""
    folder = RunsFolder(root)
    launcher = Launcher(folder, max_runs)
    tryout = Tryout(device)
    pages = Environment(loader=PackageLoader("tunesmith.ui"), autoescape=select_autoescape(["html"]))
    pages.filters["number"] = _number
    pages.policies["json.dumps_kwargs"] = {"sort_keys": False}  # a damaged config's mapping may mix number and text keys
    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None, openapi_url=None, default_response_class=FiniteJSON)
    app.state.launcher = launcher  # the processes it started, for whoever embeds the app

    def page(template: str, **values) -> HTMLResponse:
        return HTMLResponse(pages.get_template(template).render(root=str(folder.root), **values))

    def shown(row):
        """A run this page launched is `starting` until its process has recorded itself."""
        if row.state != "running" and launcher.starting(row.name):
            row.state = "starting"
        return row

    def states() -> list:
        launcher.reap()
        return [shown(row) for row in folder.rows()]

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        status = 404 if isinstance(exc, NotARun) else 403 if isinstance(exc, Outside) else 429 if isinstance(exc, Busy) else 400
        if request.url.path.startswith("/api/") or request.method != "GET":
            return JSONResponse({"error": " ".join(exc.lines()), "problems": exc.lines()}, status_code=status)
        return HTMLResponse(pages.get_template("error.html").render(message=str(exc), root=str(folder.root)), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        where = ", ".join(".".join(str(part) for part in error["loc"]) + f": {error['msg']}" for error in exc.errors())
        return await user_error(request, UserError(f"{where}; correct it and ask again"))

    @app.get("/", response_class=HTMLResponse)
    def runs_page():
        return page("runs.html", rows=states())

    @app.get("/fragments/runs", response_class=HTMLResponse)
    def runs_fragment():
        return page("runs_rows.html", rows=states())

    @app.get("/api/runs")
    def runs_json():
        return {"runs": [row.as_dict() for row in states()]}

    @app.get("/runs/{name:path}", response_class=HTMLResponse)
    def run_page(name: str):
        detail = folder.detail(name)
        shown(detail["row"])
        return page("run.html", name=name, detail=detail, log=folder.log_tail(name))

    @app.get("/fragments/run/{name:path}/findings", response_class=HTMLResponse)
    def findings_fragment(name: str):
        return page("findings.html", findings=folder.findings(name), state=shown(folder.row(name)).state)

    @app.get("/api/run/{name:path}/metrics")
    def run_metrics(name: str, offset: int = 0):
        row = shown(folder.row(name))
        return {**folder.new_metrics(name, max(0, offset)), "state": row.state, "steps": row.steps,
                "total_steps": row.total_steps, "log": folder.log_tail(name, 4000)}

    @app.get("/sweeps", response_class=HTMLResponse)
    def sweeps_page():
        return page("sweeps.html", sweeps=sweep_rows(folder))

    @app.get("/sweeps/{name:path}", response_class=HTMLResponse)
    def sweep_page(name: str):
        return page("sweep.html", name=name, detail=sweep_detail(folder, name))

    @app.get("/api/sweep/{name:path}")
    def sweep_json(name: str):
        return sweep_detail(folder, name)

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(request: Request):
        names = request.query_params.getlist("run")
        return page("compare.html", names=names, comparison=folder.compare(names))

    @app.get("/api/compare/metrics")
    def compare_metrics(request: Request):
        return {name: folder.new_metrics(name, 0)["rows"] for name in request.query_params.getlist("run")}

    @app.get("/new", response_class=HTMLResponse)
    def new_page():
        keys = form_keys()
        sections = [(section, list(group)) for section, group in itertools.groupby(
            (key for key in keys if key.key not in ESSENTIALS), key=lambda key: key.section)]
        return page("new.html", essentials=[key for key in keys if key.key in ESSENTIALS], sections=sections)

    async def _body(request: Request) -> dict:
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            raise UserError("send the request as a JSON object") from None
        if not isinstance(body, dict):
            raise UserError("send the request as a JSON object")
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # JSON's \ud800 escapes decode to lone surrogates, which no tokenizer or file takes
            raise UserError("the request holds text that is not valid Unicode (a lone surrogate); send text as UTF-8") from None
        return body

    def _text(body: dict, key: str) -> str:
        value = body.get(key, "")
        if not isinstance(value, str):
            raise UserError(f"{key}: send text, not {type(value).__name__}")
        return value

    def _settings(body: dict):
        """The sampling settings as sent; only a missing or null one means the defaults (an empty list is refused)."""
        settings = body.get("settings")
        return {} if settings is None else settings

    async def _draft(request: Request) -> Draft:
        return Draft.from_form(await _body(request))

    @app.post("/api/new/check")
    async def check_new(request: Request):
        from starlette.concurrency import run_in_threadpool

        cfg = await run_in_threadpool(launcher.config, await _draft(request))  # a data folder is expanded: not on the loop
        return {"ok": True, "config": cfg.to_yaml()}

    @app.post("/api/new/preview")
    async def preview_new(request: Request):
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(launcher.preview, await _draft(request))

    @app.post("/api/new/start")
    async def start_new(request: Request):
        from starlette.concurrency import run_in_threadpool

        name = await run_in_threadpool(launcher.start, await _draft(request))
        return {"ok": True, "name": name}

    @app.post("/api/run/{name:path}/stop")
    def stop_run(name: str):
        launcher.stop(name)
        return {"ok": True}

    @app.post("/api/run/{name:path}/resume")
    def resume_run(name: str):
        launcher.resume(name)
        return {"ok": True}

    def final_model(name: str) -> Path:
        """A run's final model for try-it, refused whole when any of its files leads out of the runs folder."""
        final = folder.run_dir(name) / "final"
        if folder.own(final.parent, final.name) is None or (final.is_dir() and folder.first_leaving(final) is not None):
            raise Outside(f"{name}: its final model leads outside the runs folder {folder.root}; the page loads only what is inside it")
        return final

    def reward_run(path: str) -> Path:
        """A GRPO reward's classifier or reward-model run, refused when it or any of its files leads outside the folder."""
        run = folder.inside(path)
        if run.is_dir() and folder.first_leaving(run) is not None:
            raise Outside(f"{path}: it leads outside the runs folder {folder.root}; the page loads only what is inside it")
        return run

    @app.post("/api/run/{name:path}/chat")
    async def chat(name: str, request: Request):
        from starlette.concurrency import run_in_threadpool

        body = await _body(request)
        reply = await run_in_threadpool(tryout.chat, final_model(name), body.get("history", []),
                                        _text(body, "text"), _settings(body))
        return {"reply": reply}

    @app.post("/api/run/{name:path}/generate")
    async def generate(name: str, request: Request):
        from starlette.concurrency import run_in_threadpool

        body = await _body(request)
        prompt, model = _text(body, "prompt"), final_model(name)
        completion = await run_in_threadpool(tryout.generate, model, prompt, _settings(body))
        run_dir = folder.run_dir(name)
        config = folder.config(run_dir)
        if view_of(folder.summary(run_dir) or {}, config or {}).rewarded:
            return {"text": completion.text, **await run_in_threadpool(tryout.rewards, config, reward_run, prompt, completion)}
        return {"text": completion.text}

    @app.post("/api/run/{name:path}/score")
    async def score(name: str, request: Request):
        from starlette.concurrency import run_in_threadpool

        body = await _body(request)
        if body.get("settings") not in (None, {}):
            raise UserError("settings: a reward model takes none; send only the prompt and the answer")
        return await run_in_threadpool(tryout.score, final_model(name), _text(body, "prompt"), _text(body, "answer"))

    @app.post("/api/run/{name:path}/classify")
    async def classify(name: str, request: Request):
        from starlette.concurrency import run_in_threadpool

        body = await _body(request)
        if body.get("settings") not in (None, {}):
            raise UserError("settings: a classifier takes none; send only the text")
        return await run_in_threadpool(tryout.classify, final_model(name), _text(body, "text"))

    @app.get("/files/{relative:path}")
    def files(relative: str):
        path = folder.inside(relative)
        if path.is_dir():
            entries = sorted(path.iterdir(), key=lambda p: (not p.is_dir(), p.name))
            shown = [(p.name + ("/" if p.is_dir() else ""), p.relative_to(folder.root).as_posix(), p.is_dir()) for p in entries]
            return page("files.html", relative=relative.strip("/"), entries=shown)
        if not path.is_file():
            raise NotARun(f"{relative}: no such file in the runs folder")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or path.suffix in (".jsonl", ".yaml", ".log", ".json", ".md"):
            kind = "text/plain; charset=utf-8"
        if path.name == REPORT_HTML and is_run_dir(path.parent):
            kind = "text/html; charset=utf-8"  # the run's own report; any other HTML in the folder is shown as text
        return FileResponse(path, media_type=kind, headers={"Content-Security-Policy": FILES_POLICY})

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/static/plotly.min.js")
    def plotly_file():
        return FileResponse(plotly_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/static/{name}")
    def static(name: str):
        path = STATIC / name
        if path.parent != STATIC or not path.is_file():
            return Response(status_code=404)
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    return Guard(app, host, port, token)


def _number(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def run_ui(app, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["TOKEN_VARIABLE", "create_app", "run_ui"]

"""The review web page (trame + vuetify) over a :class:`ReviewSession`, and the token every request must carry.

Layout: the case list, the case's messages, editor, decisions and read-out table on the left; the CT with the
segments in axial (large), coronal, sagittal and 3D views on the right (trame-slicer's remote-rendered views).
"""

from __future__ import annotations

import hmac
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from PancreasDiNTSLib.core import terminology
from PancreasDiNTSSceneLib.report import readout_rows
from trame.ui.vuetify3 import VAppLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_server import Server
from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui, create_vertical_view_gutter_ui
from trame_slicer.core import LayoutManager
from trame_slicer.rca_view import register_rca_factories

from .session import ReviewSession

COOKIE = "pancreas_dints_review"
LAYOUT = "Axial Primary"
EFFECTS = [("none", "mdi-cursor-default", "Navigate"), ("paint", "mdi-brush", "Paint"),
           ("erase", "mdi-eraser", "Erase"), ("draw", "mdi-draw", "Draw"), ("scissors", "mdi-content-cut", "Scissors")]
STATUS_COLOURS = {"not reviewed": "grey", "accepted": "green", "corrected": "blue", "rejected": "red"}


def same_origin(request: web.Request) -> bool:
    """A request a browser sent from this page's own origin (scheme-less host:port of ``Origin`` equals the
    ``Host`` the request went to), or one without ``Origin`` (not sent by a page: curl, the proxy's checks)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urllib.parse.urlsplit(origin).netloc.lower() == request.headers.get("Host", "").lower()


def token_middleware(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Every HTTP request and the websocket need ``?token=`` or the cookie set on the first visit; else 403. A
    request from another page (its ``Origin`` is not this page's host:port: another port of the same host, another
    site) is refused too, cookie or not: SameSite alone does not separate ports."""

    @web.middleware
    async def check(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        given = request.query.get("token") or request.cookies.get(COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.Response(status=403, text="403: open the address with the token printed when "
                                                 "`pancreas-dints review` started\n")
        if not same_origin(request):
            return web.Response(status=403, text="403: a request from another page (Origin is not this page's "
                                                 "address)\n")
        response = await handler(request)
        if "token" in request.query and not isinstance(response, web.WebSocketResponse) and not response.prepared:
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    return check


def _marker(orientation: str) -> None:
    html.Div(classes=f"review-view review-view-{orientation.lower()}", style="display: none")


def _slice_gutter(server: Server, view_id: str, view: Any) -> None:
    create_vertical_slice_view_gutter_ui(server, view_id, view)
    _marker(view.get_orientation())


def _threed_gutter(server: Server, view_id: str, view: Any) -> None:
    create_vertical_view_gutter_ui(server, view_id, view)
    _marker("3D")


class ReviewPage:
    """Binds the page's state and buttons to the session; ``token`` guards every request."""

    def __init__(self, server: Server, session: ReviewSession, token: str) -> None:
        self.server, self.session, self.token = server, session, token
        self.state = server.state
        register_rca_factories(session.app.view_manager, server, slice_view_ui_f=_slice_gutter,
                               three_d_view_ui_f=_threed_gutter)
        self.layout_manager = LayoutManager(session.app.scene, session.app.view_manager, server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT)
        server.controller.on_server_bind.add(self._bind)
        self.state.update({
            "trame__title": "PancreasDiNTS review", "cases": [], "index": 0, "title": "", "message": "",
            "notice": "", "editable": False, "segment": terminology.SEGMENTS[-1].name, "effect": "none",
            "brush_mm": 5.0, "reason": "", "rows": [], "readout_source": "", "has_confidence": False,
            "show_confidence": False, "reviewer": session.reviewer, "status": "",
            "segments": [s.name for s in terminology.SEGMENTS],
        })
        self.state.change("segment")(self._on_segment)
        self.state.change("effect", "brush_mm")(self._on_effect)
        self.state.change("show_confidence")(self._on_confidence)
        self._build()
        self.open(0)

    def _bind(self, wslink_server: Any) -> None:
        wslink_server.app.middlewares.append(token_middleware(self.token))

    # -- actions
    def open(self, index: int) -> None:
        self.session.open(index)
        self.state.effect, self.state.show_confidence, self.state.reason = "none", False, ""
        self._sync("")

    def step(self, delta: int) -> None:
        self.open(self.session.index + int(delta))

    def save(self) -> None:
        self._run(lambda: self.session.save_corrected(), "saved corrected")

    def accept(self) -> None:
        self._run(lambda: self.session.decide("accepted"), "accepted")

    def reject(self) -> None:
        self._run(lambda: self.session.decide("rejected", self.state.reason or ""), "rejected")

    def _run(self, action: Callable[[], dict[str, Any]], what: str) -> None:
        try:
            done = action()
        except Exception as exc:  # one line on the page, the session keeps going
            self._sync(f"not saved: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            return
        changes = done.get("changes") or {}
        dice = ", ".join(f"{c['segment']} Dice {c['dice']:.3f} (+{c['added']}/-{c['removed']} voxels)"
                         for c in changes.values())
        self.state.effect = "none"
        self._sync(f"{what} by {done.get('reviewer')} at {done.get('time')}: {dice}")

    def undo(self) -> None:
        self.session.undo()

    def redo(self) -> None:
        self.session.redo()

    def action(self, name: str) -> None:
        self.session.apply(name)
        self.state.effect = "none"

    def _on_segment(self, segment: str, **_: Any) -> None:
        self.session.select_segment(segment)

    def _on_effect(self, effect: str, brush_mm: float, **_: Any) -> None:
        self.session.set_effect(effect, float(brush_mm or 5.0))

    def _on_confidence(self, show_confidence: bool, **_: Any) -> None:
        self.session.show_confidence(bool(show_confidence))

    def _sync(self, message: str) -> None:
        """Push the session's state to the page."""
        s, case = self.session, self.session.case
        entry = s.cases[s.index]
        with self.state:
            self.state.cases = [c.as_dict() | {"i": i} for i, c in enumerate(s.cases)]
            self.state.index = s.index
            self.state.status = entry.status
            self.state.title = f"{entry.name} ({s.index + 1} of {len(s.cases)})"
            self.state.notice = s.error or (case.read_only if case else "") or entry.problem
            self.state.editable = s.editable
            self.state.message = message
            self.state.has_confidence = s.confidence is not None
            readout = case.readout if case else None
            self.state.rows = [{"m": m, "v": v, "u": u} for m, v, u in readout_rows({"readout": readout})]
            self.state.readout_source = ("corrected labels" if case and case.corrected else "as segmented")
            if case is not None:
                self.state.segment = terminology.SEGMENTS[-1].name

    # -- layout
    def _build(self) -> None:
        with VAppLayout(self.server, full_height=True) as layout:
            layout.root.theme = "dark"
            with v3.VAppBar(density="compact"):
                v3.VToolbarTitle("PancreasDiNTS review · {{ title }}")
                v3.VChip("{{ status }}", classes="mx-2", size="small", id="case-status")
                html.Span("reviewer: {{ reviewer }}", classes="text-caption mx-4")
            with v3.VNavigationDrawer(permanent=True, width=430):
                self._case_list()
                self._case_panel()
            with v3.VMain(), html.Div(classes="d-flex fill-height", style="height: calc(100vh - 48px)"):
                self.layout_manager.initialize_layout_grid(layout)
        self.ui = layout

    def _case_list(self) -> None:
        with v3.VTable(density="compact", height=220, fixed_header=True, classes="text-caption", id="cases"):
            with html.Thead(), html.Tr():
                for title in ("case", "status", "pancreas mL", "lesion mL", "axial mm"):
                    html.Th(title)
            with html.Tbody(), html.Tr(v_for="c in cases", key="c.i", click=(self.open, "[c.i]"),
                                       style="cursor: pointer",
                                       classes=("c.i === index ? 'bg-blue-grey-darken-3' : ''",)):
                html.Td("{{ c.name }}")
                html.Td("{{ c.status }}")
                html.Td("{{ c.pancreas_ml }}")
                html.Td("{{ c.lesion_ml }}")
                html.Td("{{ c.longest_axial_diameter_mm }}")

    def _case_panel(self) -> None:
        with html.Div(classes="pa-2"):
            v3.VAlert(v_if="notice", text=("notice",), type="warning", density="compact", id="notice")
            with html.Div(classes="d-flex my-1"):
                v3.VBtn("Previous", click=(self.step, "[-1]"), disabled=("index === 0",), size="small", id="prev")
                v3.VSpacer()
                v3.VBtn("Next", click=(self.step, "[1]"), disabled=("index >= cases.length - 1",), size="small",
                        id="next")
            self._editor()
            with html.Div(classes="d-flex flex-wrap ga-1 my-2"):
                v3.VBtn("Accept", click=self.accept, color="green", size="small", disabled=("!editable",), id="accept")
                v3.VBtn("Save corrected", click=self.save, color="blue", size="small", disabled=("!editable",),
                        id="save")
                v3.VBtn("Reject", click=self.reject, color="red", size="small", disabled=("!editable || !reason",),
                       id="reject")
            v3.VTextField(v_model=("reason",), label="reason (needed to reject)", density="compact",
                          hide_details=True, id="reason")
            html.Div("{{ message }}", classes="text-caption my-2", id="message")
            html.Div("Read-out ({{ readout_source }})", classes="text-subtitle-2 mt-2")
            with v3.VTable(density="compact", classes="text-caption", id="readout"), html.Tbody():
                with html.Tr(v_for="(r, k) in rows", key="k"):
                    html.Td("{{ r.m }}")
                    html.Td("{{ r.v }} {{ r.u }}")

    def _editor(self) -> None:
        with html.Div(v_if="editable"):
            with v3.VBtnToggle(v_model=("segment",), mandatory=True, density="compact", divided=True,
                               classes="my-1"):
                v3.VBtn("{{ name }}", v_for="name in segments", key="name", value=("name",), size="small")
            with v3.VBtnToggle(v_model=("effect",), mandatory=True, density="compact", divided=True, id="effects"):
                for name, icon, title in EFFECTS:
                    v3.VBtn(icon=icon, value=name, size="small", title=title, id=f"effect-{name}")
            v3.VSlider(v_model=("brush_mm",), min=1, max=30, step=1, label="brush mm", density="compact",
                       hide_details=True, thumb_label=True, classes="mt-2")
            with html.Div(classes="d-flex flex-wrap ga-1"):
                v3.VBtn("Undo", click=self.undo, size="small", id="undo")
                v3.VBtn("Redo", click=self.redo, size="small")
                v3.VBtn("Remove small islands", click=(self.action, "['remove_small_islands']"), size="small")
                v3.VBtn("Smooth", click=(self.action, "['smooth']"), size="small")
            v3.VCheckbox(v_if="has_confidence", v_model=("show_confidence",), density="compact", hide_details=True,
                         label="Show confidence (dark = uncertain, low-confidence band)")

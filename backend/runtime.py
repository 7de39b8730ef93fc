"""Python half of h3gate-worker: app loading, the event loop, lifespan.

The HTTP/1.1 and HTTP/2 protocols and the ASGI request plumbing live in C
(module _h3gate); this file holds what runs once per process or per
lifespan event, where readability matters more than nanoseconds.
"""

import asyncio
import importlib
import inspect
import os
import signal
import sys
import traceback

import _h3gate


class AppLoadError(Exception):
    """The app spec could not be turned into an ASGI callable."""


def load_app(spec, factory):
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise AppLoadError(f'app must be given as "module:attribute", got "{spec}"')
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        cause = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        raise AppLoadError(f'could not import module "{module_name}": {cause}') from None
    app = module
    for part in attr_path.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise AppLoadError(
                f'module "{module_name}" has no attribute "{attr_path}"') from None
    if factory:
        try:
            app = app()
        except BaseException as exc:
            cause = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            raise AppLoadError(f'app factory "{spec}" raised: {cause}') from None
    if not callable(app):
        raise AppLoadError(f'"{spec}" is not callable')
    if _is_asgi2(app):
        raise AppLoadError(f'"{spec}" looks like an ASGI 2 app; h3gate-worker serves ASGI 3')
    return app


def _is_asgi2(app):
    if inspect.isclass(app):
        return True
    call = getattr(app, "__call__", None)
    fn = app if inspect.isfunction(app) or inspect.ismethod(app) else call
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return len(params) == 1 and not inspect.iscoroutinefunction(fn)


def make_loop(kind):
    """Returns (loop, name). kind is auto, asyncio or uvloop."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise AppLoadError("--loop uvloop given but uvloop is not installed "
                                   "(Debian: apt install python3-uvloop)") from None
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


def log_exception(message, exc):
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    _h3gate.log_error(f"{message}\n{text.rstrip()}")


class Lifespan:
    """Runs the ASGI lifespan protocol beside the server.

    mode "auto": an app that raises before receiving lifespan.startup does not
    support lifespan, which is fine. mode "on": any failure stops start-up.
    """

    def __init__(self, app, mode, loop):
        self.app = app
        self.mode = mode
        self.loop = loop
        self.state = {}
        self.inbox = asyncio.Queue()
        self.startup_done = loop.create_future()
        self.shutdown_done = loop.create_future()
        self.supported = True
        self.failed_message = None
        self.task = None

    async def _receive(self):
        return await self.inbox.get()

    async def _send(self, message):
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            _set(self.startup_done, True)
        elif kind == "lifespan.startup.failed":
            self.failed_message = message.get("message", "")
            _set(self.startup_done, False)
        elif kind == "lifespan.shutdown.complete":
            _set(self.shutdown_done, True)
        elif kind == "lifespan.shutdown.failed":
            self.failed_message = message.get("message", "")
            _set(self.shutdown_done, False)
        else:
            raise RuntimeError(f'unexpected lifespan message type "{kind}"')

    async def _main(self):
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            if not self.startup_done.done():
                self.supported = False
                if self.mode == "on":
                    log_exception("lifespan startup failed with an exception:", exc)
                    self.failed_message = f"{type(exc).__name__}: {exc}"
                else:
                    _h3gate.log_debug(
                        f"app does not support lifespan ({type(exc).__name__}: {exc})")
                _set(self.startup_done, None)
            else:
                log_exception("lifespan raised:", exc)
        finally:
            _set(self.startup_done, None)
            _set(self.shutdown_done, None)

    async def startup(self):
        """True when the server may start serving."""
        if self.mode == "off":
            return True
        self.task = self.loop.create_task(self._main())
        await self.inbox.put({"type": "lifespan.startup"})
        result = await self.startup_done
        if result is False:
            _h3gate.log_error(f"lifespan startup failed: {self.failed_message}")
            return False
        if result is None and self.mode == "on":
            if self.failed_message is None:
                _h3gate.log_error("lifespan on: the app returned before completing startup")
            return False
        return True

    async def shutdown(self):
        if self.task is None or not self.supported or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        result = await self.shutdown_done
        if result is False:
            _h3gate.log_error(f"lifespan shutdown failed: {self.failed_message}")


def _set(future, value):
    if not future.done():
        future.set_result(value)


def serve(server, app, options):
    """Runs one worker process until it is told to stop. Returns an exit code."""
    loop, loop_name = make_loop(options["loop"])
    asyncio.set_event_loop(loop)
    lifespan = Lifespan(app, options["lifespan"], loop)
    try:
        if not loop.run_until_complete(lifespan.startup()):
            return 3  # the supervisor stops: the app refused to start
        stopped = loop.create_future()
        server.start(loop, app, lifespan.state, stopped)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(signum, server.stop, signum)
        _h3gate.log_debug(f"worker serving with the {loop_name} event loop")
        _h3gate.worker_ready()
        loop.run_until_complete(stopped)
        loop.run_until_complete(lifespan.shutdown())
        return 0
    finally:
        _cancel_all(loop)
        loop.close()


def _cancel_all(loop):
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


def _register_runner():
    # asyncio accepts what collections.abc calls a Coroutine.
    import collections.abc
    collections.abc.Coroutine.register(_h3gate.AppRunner)


_register_runner()

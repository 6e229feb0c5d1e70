"""The one server interceptor every RPC passes through.

For each call it (1) authenticates the caller: a bearer credential (JWT, API key or session
token), or the client certificate Envoy forwards in ``x-forwarded-client-cert`` (trusted only on
the edge listener that Envoy alone reaches); (2) authorizes it against the RPC's access rule
declared in the contract (``seedline.type.v1.access``) before anything is looked up, so a caller
without a grant on the license named learns nothing about the resource (AIP-193); (3) validates
the request against the contract's ``buf.validate`` rules; (4) maps domain errors to rich statuses
and anything unexpected to a logged INTERNAL. New RPCs cannot bypass it: it wraps whatever handler
the server resolves, and an RPC without an access rule is refused.
"""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import protovalidate
import structlog
from google.protobuf.message import Message
from seedline.type.v1 import access_pb2

from seedline_server.api import errors as api_errors
from seedline_server.api.ratelimit import TokenBuckets
from seedline_server.domain.errors import (
    CredentialsInvalid,
    CredentialsMissing,
    DomainError,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
)
from seedline_server.observability.rpc import note_principal, note_refusal
from seedline_server.service.context import ANONYMOUS, CallContext, Principal
from seedline_server.service.identity import NOBODY, Authenticator, Identity

log = structlog.get_logger("seedline.rpc")

_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar("seedline_call")
_identity: contextvars.ContextVar[Identity] = contextvars.ContextVar("seedline_identity", default=NOBODY)
_LICENSE = re.compile(r"^licenses/([^/]+)(/|$)")
_validator = protovalidate.Validator()  # type: ignore[no-untyped-call]
_PARTNER_URI = re.compile(r"^spiffe://seedline\.dev/partner/([A-Za-z0-9._-]{1,64})$")
XFCC = "x-forwarded-client-cert"


def current() -> CallContext:
    """The context of the RPC being served."""
    return _current.get()


def identity() -> Identity:
    """The authenticated caller of the RPC being served (anonymous outside a call)."""
    return _identity.get()


def require(permission: str, license_id: str | None) -> None:
    """Raise PERMISSION_DENIED unless the caller holds ``permission`` on ``license_id``.

    For handlers whose rule cannot be decided from the request alone (e.g. the target license of
    a transfer): call it before revealing anything about the resource.
    """
    who = identity()
    if who.anonymous:
        raise CredentialsMissing("this call needs credentials")
    if not who.grants.allows(permission, license_id):
        where = f"licenses/{license_id}" if license_id else "every license"
        raise PermissionDenied(
            f"{who.principal.name} may not {permission} on {where}",
            metadata={"permission": permission, "license": where},
        )


def license_of(request: Message, field_path: str) -> str | None:
    """The license id named by ``field_path`` of the request (``licenses/{id}/...``), or None."""
    value: Any = request
    for part in field_path.split("."):
        value = getattr(value, part, "")
    match = _LICENSE.match(value) if isinstance(value, str) else None
    if match is None or match.group(1) == "-":
        return None
    return match.group(1)


def authorize(rule: access_pb2.AccessRule | None, request: Message) -> None:
    """Enforce an RPC's access rule for the current caller (see the module docstring)."""
    if rule is None:
        raise PermissionDenied("this RPC declares no access rule; it is refused")
    if rule.scope == access_pb2.ACCESS_SCOPE_PUBLIC:
        return
    if identity().anonymous:
        raise CredentialsMissing("this call needs credentials: a bearer token or a client certificate")
    if rule.scope == access_pb2.ACCESS_SCOPE_AUTHENTICATED:
        # The handler narrows to the caller's grants; the caller must hold the permission somewhere.
        grants = identity().grants
        if rule.permission and not any(grants.allows(rule.permission, lic) for lic in grants.licenses()):
            require(rule.permission, None)
        return
    if rule.scope == access_pb2.ACCESS_SCOPE_GLOBAL:
        require(rule.permission, None)
        return
    field = rule.license_field or ("parent" if request.DESCRIPTOR.fields_by_name.get("parent") else "name")
    require(rule.permission, license_of(request, field))


def _split_unquoted(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes; XFCC quotes values that contain , ; = or quotes."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _xfcc_uri(value: str) -> str:
    """The ``URI=`` of the last element Envoy appended (the verified peer)."""
    element = _split_unquoted(value, ",")[-1]
    for part in _split_unquoted(element, ";"):
        key, _, val = part.partition("=")
        if key.strip().lower() == "uri":
            return val.strip().strip('"')
    return ""


def principal_from(metadata: dict[str, str], *, trust_forwarded: bool) -> Principal:
    """Who is calling, from the call's metadata.

    Args:
        metadata: the invocation metadata.
        trust_forwarded: True only on the edge listener behind Envoy; on the direct listener a
            forwarded client certificate header is ignored.

    """
    if trust_forwarded and (value := metadata.get(XFCC)):
        uri = _xfcc_uri(value)
        if match := _PARTNER_URI.fullmatch(uri):
            return Principal(name=f"partners/{match.group(1)}", kind="PARTNER_CERTIFICATE", detail=uri)
    return ANONYMOUS


def violations_of(request: Message) -> list[FieldViolation]:
    """The contract's validation violations of ``request`` as dotted field paths."""
    try:
        found = _validator.collect_violations(request)
    except Exception as exc:  # a rule could not be evaluated on this input (e.g. double("d"))
        log.info("validation rule failed to evaluate", error=str(exc))
        return [FieldViolation("(request)", f"the request could not be validated: {type(exc).__name__}")]
    out = []
    for violation in found:
        proto = violation.proto
        parts = []
        for element in proto.field.elements:
            part = element.field_name
            if element.HasField("index"):
                part += f"[{element.index}]"
            elif element.HasField("string_key"):
                part += f"[{element.string_key!r}]"
            parts.append(part)
        path = ".".join(parts)
        rule = proto.rule_id
        out.append(
            FieldViolation(path or "(request)", f"{proto.message} [{rule}]" if rule else proto.message)
        )
    return out


# Request message full name -> a function that adds context to the contract's violations of such
# a request (e.g. the lab metric behind ``lab_result.metrics[3].qom``); registered by servicers.
Annotator = Callable[[Message, list[FieldViolation]], list[FieldViolation]]
_annotators: dict[str, Annotator] = {}


def annotate_violations(message_type: type[Message], annotator: Annotator) -> None:
    """Have :func:`validate` pass violations of ``message_type`` requests through ``annotator``."""
    _annotators[message_type.DESCRIPTOR.full_name] = annotator


# Request message full name -> a hand-written equivalent of the contract's rules for that message,
# used instead of protovalidate on hot paths (protovalidate costs milliseconds per message; a
# telemetry batch arrives hundreds of times a second). Each is tested against protovalidate.
Checker = Callable[[Message], list[FieldViolation]]
_checkers: dict[str, Checker] = {}


def check_with(message_type: type[Message], checker: Checker) -> None:
    """Have :func:`validate` check ``message_type`` requests with ``checker`` (see ``_checkers``)."""
    _checkers[message_type.DESCRIPTOR.full_name] = checker


def validate_masked_only(request_type: type[Message], resource_field: str) -> None:
    """Have updates of ``request_type`` check only what their mask names (AIP-134).

    A PATCH of one field need not restate the rest of the resource (required fields, whole-message
    rules): violations under ``resource_field`` outside the masked paths are dropped, except the
    resource's ``name`` and ``etag``. The use case validates the merged resource before storing it.
    With no mask (or ``*``) everything is checked.
    """

    def masked_only(request: Message, found: list[FieldViolation]) -> list[FieldViolation]:
        paths = [p for p in getattr(request, "update_mask").paths if p != "*"]  # noqa: B009
        if not paths:
            return found
        heads = {p.split(".", 1)[0] for p in paths} | {"name", "etag"}
        kept = []
        for v in found:
            if v.field != resource_field and not v.field.startswith(resource_field + "."):
                kept.append(v)  # update_mask, request_id, ...
                continue
            rest = v.field[len(resource_field) :].lstrip(".")
            if rest and rest.split(".", 1)[0].split("[", 1)[0] in heads:
                kept.append(v)
        return kept

    annotate_violations(request_type, masked_only)


def validate(request: Message) -> None:
    """Raise INVALID_ARGUMENT with every field violation, or return."""
    checker = _checkers.get(request.DESCRIPTOR.full_name)
    found = checker(request) if checker is not None else violations_of(request)
    if found and (annotator := _annotators.get(request.DESCRIPTOR.full_name)) is not None:
        found = annotator(request, found)
    if found:
        fields = ", ".join(sorted({v.field for v in found}))
        raise InvalidArgument(f"invalid request: {fields}", found)


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Identity, validation and error mapping for every unary, server-streaming and bidi RPC."""

    def __init__(
        self,
        *,
        trust_forwarded: bool,
        authenticator: Authenticator | None = None,
        rules: dict[str, access_pb2.AccessRule] | None = None,
        limits: TokenBuckets | None = None,
    ) -> None:
        self._trust_forwarded = trust_forwarded
        self._limits = limits
        self._auth = authenticator
        self._rules = rules

    async def _authenticate(self, metadata: dict[str, str], principal: Principal) -> Identity:
        """The caller's identity: a bearer credential wins over a forwarded certificate."""
        header = metadata.get("authorization", "")
        if self._auth is None:
            return Identity(principal, NOBODY.grants)
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise CredentialsInvalid("the credential is not valid")
            return await self._auth.bearer(token.strip())
        if principal.kind == "PARTNER_CERTIFICATE":
            return self._auth.partner(principal)
        return NOBODY

    async def _admit(self, request: Message, ctx: CallContext, metadata: dict[str, str]) -> None:
        rule = await self._identify(ctx, metadata)
        if self._rules is not None:
            authorize(rule, request)

    async def _identify(self, ctx: CallContext, metadata: dict[str, str]) -> access_pb2.AccessRule | None:
        """Authenticate the caller and charge its rate limit; returns the RPC's access rule."""
        rule = self._rules.get(ctx.method) if self._rules is not None else None
        try:
            who = await self._authenticate(metadata, ctx.principal)
        except CredentialsInvalid:
            if rule is None or rule.scope != access_pb2.ACCESS_SCOPE_PUBLIC:
                raise
            who = NOBODY  # public RPCs treat a bad credential as none ("who am I" says anonymous)
        _identity.set(who)
        _current.set(CallContext(principal=who.principal, method=ctx.method, request_id=ctx.request_id))
        note_principal(who.principal.name)
        if self._limits is not None:
            self._limits.check(who.principal.name)  # per principal (RESOURCE_EXHAUSTED + RetryInfo)
        return rule

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        metadata = {k: v for k, v in handler_call_details.invocation_metadata or () if isinstance(v, str)}
        ctx = CallContext(
            principal=principal_from(metadata, trust_forwarded=self._trust_forwarded),
            method=method.lstrip("/").replace("/", "."),
            request_id=metadata.get("x-request-id", ""),
        )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, ctx, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._server_stream(handler.unary_stream, ctx, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._bidi_stream(handler.stream_stream, ctx, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _fail(
        self, context: grpc.aio.ServicerContext[Any, Any], ctx: CallContext, exc: Exception
    ) -> None:
        if isinstance(exc, DomainError):
            status = api_errors.to_status(exc)
            note_refusal(exc, ctx.method)
            log.info("rpc refused", method=ctx.method, reason=exc.reason, message=exc.message)
        else:
            log.exception("rpc failed", method=ctx.method, request_id=ctx.request_id)
            status = api_errors.internal_status(ctx.request_id)
        await context.abort_with_status(api_errors.to_grpc(status))

    def _unary(self, inner: Any, ctx: CallContext, metadata: dict[str, str]) -> Any:
        async def behavior(request: Message, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = _current.set(ctx)
            who = _identity.set(NOBODY)
            started = time.perf_counter()
            try:
                await self._admit(request, ctx, metadata)
                validate(request)
                return await inner(request, context)
            except Exception as exc:
                if isinstance(exc, (grpc.aio.AbortError, grpc.RpcError)):
                    raise
                await self._fail(context, ctx, exc)
            finally:
                _identity.reset(who)
                _current.reset(token)
                log.debug("rpc", method=ctx.method, ms=round((time.perf_counter() - started) * 1000, 2))

        return behavior

    def _server_stream(self, inner: Any, ctx: CallContext, metadata: dict[str, str]) -> Any:
        async def behavior(
            request: Message, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            token = _current.set(ctx)
            who = _identity.set(NOBODY)
            try:
                await self._admit(request, ctx, metadata)
                validate(request)
                async for item in inner(request, context):
                    yield item
            except Exception as exc:
                if isinstance(exc, (grpc.aio.AbortError, grpc.RpcError)):
                    raise
                await self._fail(context, ctx, exc)
            finally:
                _identity.reset(who)
                _current.reset(token)

        return behavior

    def _bidi_stream(self, inner: Any, ctx: CallContext, metadata: dict[str, str]) -> Any:
        """Bidirectional streams: identity at the start, the access rule on the first message.

        The caller is authenticated from the metadata before any message is read. The access
        rule is decided on the first message (e.g. its ``parent``); the servicer binds the stream
        to what that message named and refuses later messages that name something else, so the
        decision holds for the whole stream. Every message is validated against the contract;
        an invalid one ends the stream with INVALID_ARGUMENT.
        """

        async def behavior(
            request_iterator: AsyncIterator[Message], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            token = _current.set(ctx)
            who = _identity.set(NOBODY)
            try:
                rule = await self._identify(ctx, metadata)
                iterator = aiter(request_iterator)
                try:
                    first = await anext(iterator)
                except StopAsyncIteration:
                    return  # the client closed without a message: nothing to authorize or answer
                if self._rules is not None:
                    authorize(rule, first)
                validate(first)

                async def requests() -> AsyncIterator[Message]:
                    yield first
                    async for item in iterator:
                        validate(item)
                        yield item

                async for item in inner(requests(), context):
                    yield item
            except Exception as exc:
                if isinstance(exc, (grpc.aio.AbortError, grpc.RpcError)):
                    raise
                await self._fail(context, ctx, exc)
            finally:
                _identity.reset(who)
                _current.reset(token)

        return behavior

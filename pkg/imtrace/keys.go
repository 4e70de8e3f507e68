package imtrace

import (
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Span names of a message's hops (CONTRACTS.md, DESIGN.md "A message's trace").
const (
	SpanClientSend     = "im.client.send"
	SpanGatewayReceive = "im.gateway.receive"
	SpanLogicHandle    = "im.logic.handle"
	SpanStoreAppend    = "im.store.append"
	SpanGatewayPush    = "im.gateway.push"
	SpanGatewaySync    = "im.gateway.sync" // a message handed to a device in a sync answer
	SpanClientReceive  = "im.client.receive"
	SpanClientAck      = "im.client.ack"
	SpanLogicAck       = "im.logic.ack"
	SpanProbeRound     = "im.probe.round"
)

// Attribute keys a hop span carries: OpenTelemetry's messaging conventions
// (semconv v1.43.0, the version the SDK v1.47.0 uses) plus imwatch's own.
const (
	KeyMessagingSystem = semconv.MessagingSystemKey                // always "imwatch"
	KeyOperationType   = semconv.MessagingOperationTypeKey         // send | receive | process, from the span kind
	KeyMessageID       = semconv.MessagingMessageIDKey             // server message id
	KeyConversationID  = semconv.MessagingMessageConversationIDKey // conversation id (d=A=B or g=G)
	KeyDestination     = semconv.MessagingDestinationNameKey       // NATS subject, gateway or user the hop sends to
	KeyRecipientCount  = semconv.MessagingBatchMessageCountKey     // recipients of the message (fan-out width)
	KeyErrorType       = semconv.ErrorTypeKey                      // error code of a failed hop

	KeySeq         = attribute.Key("imwatch.seq")           // per-conversation sequence
	KeyUser        = attribute.Key("imwatch.user")          // sender user
	KeyRecipient   = attribute.Key("imwatch.recipient")     // recipient user of this hop
	KeyProbe       = attribute.Key("imwatch.probe")         // bool: a probe message, always sampled
	KeyClientMsgID = attribute.Key("imwatch.client_msg_id") // the sender's client message id
	KeyAttempt     = attribute.Key("imwatch.attempt")       // a push's attempt: 1, then 2 and more for redeliveries
)

// SystemName is the value of messaging.system on every hop span.
const SystemName = "imwatch"

var systemAttr = KeyMessagingSystem.String(SystemName)

// Header names of the W3C trace context, in frames and NATS headers alike.
const (
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"
)

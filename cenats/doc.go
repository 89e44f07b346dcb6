// Package cenats carries CloudEvents 1.0 over NATS the way the comjobs
// contract fixes it, around sdk-go's event.Event.
//
// sdk-go's own NATS codec neither percent-encodes attribute values nor reads
// header names case-insensitively, so comjobs uses this small codec instead:
//
//   - Encode writes binary mode: every context attribute and extension in a
//     ce-<name> header, values percent-encoded as the CloudEvents HTTP
//     binding (and the NATS binding draft) says — space, '"', '%' and every
//     byte outside printable ASCII become %XX of their UTF-8 — and
//     datacontenttype in both ce-datacontenttype and content-type. The body
//     is the data, as is.
//   - Decode reads binary mode or structured mode
//     (content-type: application/cloudevents+json), header names in any case,
//     either content-type header, and is strict: specversion 1.0, id, source
//     and type present and non-empty, time in RFC 3339, a size limit. Every
//     refusal is a *schemas.Rejection with reason invalid-event whose message
//     names the attribute and the rule.
//
// Nats-Msg-Id is not this package's business: the publisher sets it.
package cenats

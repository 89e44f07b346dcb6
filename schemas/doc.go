// Package schemas is the event contract of comjobs: the Go types and JSON
// Schemas of the data of every CloudEvent comjobs consumes or publishes, the
// names of event types, subjects and extensions, the request identity key,
// and validation of incoming requests against the template catalog.
//
// Packages talk to each other through these types, not through each other's
// internals: the consumer publishes a Submitted event, the tracker learns of
// the job from it; the tracker publishes JobEvents, the notifier renders them.
package schemas

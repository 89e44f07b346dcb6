// Package tracker follows every job comjobs submitted to COM until it ends,
// and publishes each observed change of state exactly once.
//
// It learns of jobs from comjobs.job.submitted events (durable "tracker"),
// keeps one record per job in the comjobs-jobs key-value bucket, and feeds
// every observation of a job — a v1 list page, a per-job GET, a COM webhook
// delivery, a 404 — through one state machine:
//
//   - an observation whose generation is not newer than the record's is
//     ignored (stale or duplicate);
//   - a new state (or the first observation) becomes a
//     comjobs.job.state-changed event with id and Nats-Msg-Id
//     "<jobId>/<generation>"; a job outliving its template's expected
//     duration becomes one comjobs.job.overdue event per threshold;
//   - events are first written into the record's outbox with a
//     compare-and-set on the record's revision, then published, then removed
//     from the outbox. Whoever wins the compare-and-set owns the change;
//     whoever finds an outbox publishes it again before anything newer (the
//     stream's duplicate window drops the copy). So replicas, restarts and
//     crashes between the steps neither lose nor double an event, and events
//     of one job reach the stream in generation order.
//
// Only the holder of a lease in the comjobs-control bucket polls COM. In v1
// mode a poll cycle is one list call for the jobs updated since a watermark
// (minus ListMargin, for clock skew and list lag inside COM), paging by
// updatedAt 1000 at a time, plus at most one check call: the jobs not seen
// in a list for a while, 50 at a time with "id in (...)"; a job missing from
// its answer is read on its own (404 → terminal pseudo-state LOST). After a
// complete walk the watermark moves to COM's clock (the list answer's Date
// header) when that is later than the newest change seen, so a cycle with
// nothing new costs one call whatever the number of jobs. In v1beta3 and
// v1beta2 modes each job is read on its own, at an interval derived from its
// template's expected duration. A 429 pauses all polling for as long as COM
// asks.
//
// The tracker keeps a small entry per job in memory (state, generation,
// when it is next due to be checked or announced overdue), not the record:
// at 100,000 tracked jobs it stays under 100 MiB resident.
package tracker

// Package consumer turns comjobs.job.requested events into COM jobs, so that
// every request (source, id) yields exactly one COM job or exactly one
// rejection that says why — whatever is redelivered, retried, crashed or
// restarted.
//
// COM has no idempotency key, so the consumer keeps a ledger in the
// JetStream key-value bucket schemas.BucketLedger:
//
//	req.<requestKey>        the request's claim and outcome (JSON ledgerEntry)
//	job.<jobId>             the request key that owns a COM job (created once)
//	fly.<resHash>.<reqKey>  a POST for a (template, resource) pair, in flight
//	                        while the request's claim has no job id
//	lock.<resHash>          a request recovering an unresolved claim for that pair
//	fail.<reqKey>           how many transient failures the request met
//
// A request is claimed (compare-and-set) before the POST and its job id is
// recorded after it, together with the reverse job → request key, so no
// other request can ever adopt that job. A redelivered request whose claim
// has no job id first looks in COM for the job it may already have created
// (skipping jobs other requests own) before it submits again. While it
// recovers it holds lock.<resHash>, so new requests for the same template
// and resource wait; it waits in turn for requests still inside their POST.
//
// A fresh request costs the claim (its create doubles as the ledger read)
// and the in-flight mark, written together and awaited once; the POST; the
// owner create; the submitted event; then the ledger's submitted record:
// five stored messages and four waits on JetStream, each durable before
// the step that relies on it. Every compare-and-set is an asynchronous
// publish with expected-last-subject-sequence headers, so the writes of
// many requests are in flight at once. The in-flight mark is stored only
// if lock.<resHash> has not moved since it was last seen, checked by the
// bucket in the same step: a recovery that takes the lock afterwards lists
// the mark, and a mark refused makes the request read the lock (and wait
// while another request holds it). The mark is not deleted on the way:
// once the claim records a job id it holds nobody back, and a recovery
// that meets it clears it. A crash between the POST and the submitted
// record leaves a claim without a job id, which the redelivery resolves
// through the COM search: it finds the job this request owns (or, before
// the owner record, the oldest job no request owns) and publishes the
// event again under the same dedupe id.
//
// Fetched messages are taken in batches (up to 32, as many as are waiting
// and have a place: Config.Workers places bound the requests handled at
// once, in batches or alone), and each batch runs in a goroutine of its
// own, taking its requests through the fresh path step by step: every
// claim and mark are sent before any is awaited, the creates run at once,
// then the owner records, the submitted events and the submitted records
// go out the same way, and the messages are acked. Messages then share the
// connection's writes and JetStream's answers, and one goroutine waits per
// step instead of one per request: about a tenth less CPU per request
// (make bench). The claim step's waits are bounded together (jsWait), not
// one after another, and each request's later writes by its own record
// budget from when the batch takes its job, as alone from the end of its
// create. A request that leaves the common path at any step — it does not
// validate, its claim exists, a write is refused or fails, COM refuses or
// fails the create (it goes at once), its create is far slower than the
// batch's others — goes on alone from that step down the same code, so it
// ends exactly as it would have (comjobs_consumer_alone_total counts them
// by step).
//
// Every fetched message is kept alive with InProgress from its arrival
// until it is acked or handed back, and a pull asks for no more than the
// hand-off has room for, so a message waiting for a free place never
// outlives its ack wait and spends no delivery. Once Run's context ends,
// a message still waiting for a place is handed back, not started.
//
// Outcomes map explicitly onto JetStream: success → submitted event, Ack;
// permanent → rejected event, dead letter, Term; transient → NakWithDelay
// with exponential backoff and jitter, by the request's count of transient
// failures (fail.<reqKey>), not its deliveries: hand-backs while a claim
// is recovered, at a drain or after a crash do not lengthen the backoff.
// The MaxDeliver-th failure dead-letters with reason retries-exhausted, as
// does the durable's MaxDeliver (the outer net; the MAX_DELIVERIES
// advisory covers deliveries the handler never finished). A create COM
// rate-limited before taking anything (429, or a call the client's rate
// limiter never let out) releases the claim and tries again within the
// same delivery once the wait is over, its message kept with InProgress,
// so a rate-limit storm spends no deliveries. COM
// configuration faults pause submission, fail Ready and leave the requests
// queued: nothing is fetched while paused but one probe, which a worker
// holds with InProgress and handles again every ProbeEvery, so a long
// outage spends no deliveries; the probe is handed back (one delivery) at
// shutdown or a pause by hand.
package consumer

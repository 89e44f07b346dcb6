// Package deploy holds what an operator applies to run comjobs: Kubernetes
// manifests (kubernetes/), the NATS JetStream cluster configuration and the
// per-role NATS users (nats/, natsauth/), Prometheus alert rules
// (prometheus/), a Grafana dashboard (grafana/), the container image
// (docker/) and a systemd unit (systemd/). README.md says in which order to
// apply them.
//
// The package has no code of its own; its test parses every manifest,
// checks that dashboards and alerts name metrics comjobs really exports, and
// runs each role's NATS operations against an embedded server authorised by
// nats/permissions.json.
package deploy

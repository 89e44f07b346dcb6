package chaos

import (
	"fmt"
	"math/rand/v2"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/schemas"
)

// upstreamSource is the CloudEvents source of the valid requests.
const upstreamSource = "//chaos.example.net/upstream"

// Scenarios of valid requests: the path the simulator sends the job on.
const (
	scenOrdinary = "ordinary"
	scenStall    = "stalled" // STALLED until the test ends it by hand
	scenFail     = "failure" // COMPLETE/FAILURE
	scenError    = "error"   // ERROR/FAILURE
	scenApproval = "approval"
	scenGroup    = "group" // a group job with a child per member
)

// Extra inventory, so jobs do not all queue behind a dozen servers and the
// scenario servers (whose id names the path) are not one-at-a-time either.
var (
	chaosServers   = numbered(40, func(i int) string { return fmt.Sprintf("CHAOS%02d-S01+1M5125%04d", i, i) })
	stallServers   = numbered(8, func(i int) string { return fmt.Sprintf("SIM-STALL-%02d", i) })
	failServers    = numbered(4, func(i int) string { return fmt.Sprintf("SIM-FAIL-%02d", i) })
	errorServers   = numbered(4, func(i int) string { return fmt.Sprintf("SIM-ERROR-%02d", i) })
	approvServers  = numbered(4, func(i int) string { return fmt.Sprintf("SIM-APPROVAL-%02d", i) })
	serverTemplate = []struct {
		slug   string
		params map[string]any
	}{
		{"server-power-off", nil},
		{"server-power-on", nil},
		{"server-restart", nil},
		{"server-cold-boot", nil},
		{"server-inventory", nil},
		{"server-firmware-update", map[string]any{"bundle_id": "de600c7f01e29f793f26ad91b31d96ce"}},
	}
)

// numbered returns name(1) .. name(n).
func numbered(n int, name func(i int) string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = name(i + 1)
	}
	return out
}

// chaosInventory is the simulator's default inventory plus the servers
// above. SIM-*-01 are already in it.
func chaosInventory() *comsim.Inventory {
	inv := comsim.DefaultInventory()
	for _, list := range [][]string{chaosServers, stallServers, failServers, errorServers, approvServers} {
		for _, id := range list {
			inv.Add(com.ResourceServer, id)
		}
	}
	return inv
}

// validRequest is one valid request of the run.
type validRequest struct {
	id       string
	scenario string
	req      schemas.Request
	// republish: also publish it again, raw and without Nats-Msg-Id, so
	// only the consumer's ledger stands between it and a second job.
	republish bool
}

// makeRequests builds n valid requests, deterministically from seed: mostly
// ordinary server jobs, and shares of STALLED, failing, ERROR, approval and
// group jobs. Every request names one of channels for its notifications.
func makeRequests(run string, n int, seed uint64, channels []string) []validRequest {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	fleet := append(comsim.FleetServers(), chaosServers...)
	pick := func(ids []string) string { return ids[rng.IntN(len(ids))] }
	out := make([]validRequest, n)
	for i := range out {
		r := validRequest{id: fmt.Sprintf("chaos-%s-%05d", run, i), scenario: scenOrdinary}
		t := serverTemplate[rng.IntN(len(serverTemplate))]
		server := pick(fleet)
		switch p := rng.Float64(); {
		case p < 0.01:
			r.scenario, server = scenStall, pick(stallServers)
		case p < 0.04:
			r.scenario, server = scenFail, pick(failServers)
		case p < 0.07:
			r.scenario, server = scenError, pick(errorServers)
		case p < 0.09:
			r.scenario, server = scenApproval, pick(approvServers)
		case p < 0.11:
			r.scenario = scenGroup
		}
		r.req = schemas.Request{
			Template: t.slug,
			Data:     t.params,
			Notify:   &schemas.Notify{SlackChannel: channels[i%len(channels)]},
			Labels:   map[string]string{"chaos": r.scenario, "n": fmt.Sprint(i)},
		}
		if r.scenario == scenGroup {
			r.req.Template, r.req.Data = "group-firmware-update", nil
			r.req.Resource = &schemas.Resource{Type: com.ResourceGroup, ID: comsim.DefaultGroup}
		} else if rng.IntN(2) == 0 {
			r.req.ResourceURI = "/compute-ops-mgmt/v1beta2/servers/" + server
		} else {
			r.req.Resource = &schemas.Resource{Type: com.ResourceServer, ID: server}
		}
		r.republish = rng.Float64() < 0.03
		out[i] = r
	}
	return out
}

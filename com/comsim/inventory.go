package comsim

import (
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/comjobs/comjobs/com"
)

// Resource is one thing a job can act on. Members is set for groups only:
// the ids of the servers in the group.
type Resource struct {
	Type    string   // v1 form, e.g. "compute-ops-mgmt/server"
	ID      string   // e.g. "875765-S01+1M512501AB"
	Members []string // servers of a group, in order
}

// Inventory is the set of resources the simulator knows. A job on a resource
// that is not in it gets COM's 404. It is safe for concurrent use, and may be
// changed while the simulator serves.
type Inventory struct {
	mu    sync.RWMutex
	items map[string]*Resource // by type + "\x00" + id
}

// NewInventory returns an empty inventory.
func NewInventory() *Inventory {
	return &Inventory{items: make(map[string]*Resource)}
}

// Scenario server ids of the default inventory: jobs on them follow the
// path their id names (see the package doc).
const (
	ServerStall    = "SIM-STALL-01"
	ServerFail     = "SIM-FAIL-01"
	ServerError    = "SIM-ERROR-01"
	ServerApproval = "SIM-APPROVAL-01"
)

// Ids of the default inventory that the request cases in shared/cases name.
const (
	DefaultServer1   = "875765-S01+1M512501AB"
	DefaultServer2   = "P06760-B21+2M212504P8"
	DefaultGroup     = "8a3a2a46-0102-48e2-bdd9-a29ee6909860"
	DefaultSetting   = "2e6c4f1a-9b3d-4c7e-8a2f-6d5b1e0c9a37"
	DefaultAppliance = "oneview+5c1b2f6e-7a43-4a8e-9d0c-2f1e6b3a9c71"
	DefaultFilter    = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
	// MixedGroup holds an ordinary server and ServerFail: its group jobs
	// end COMPLETE/FAILURE because one child fails.
	MixedGroup = "5f0e7d3c-2b1a-4c9d-8e7f-6a5b4c3d2e1f"
	// FleetGroup holds the ten ordinary fleet servers.
	FleetGroup = "0b7c6d5e-4f3a-4b2c-9d1e-8f7a6b5c4d3e"
)

// DefaultInventory returns a fresh inventory holding every resource the
// shared request cases name, the scenario servers, ten ordinary servers
// (FleetServers), and groups with members: DefaultGroup (DefaultServer1,
// DefaultServer2), MixedGroup and FleetGroup.
func DefaultInventory() *Inventory {
	inv := NewInventory()
	for _, id := range []string{DefaultServer1, DefaultServer2, ServerStall, ServerFail, ServerError, ServerApproval} {
		inv.Add(com.ResourceServer, id)
	}
	fleet := FleetServers()
	for _, id := range fleet {
		inv.Add(com.ResourceServer, id)
	}
	inv.AddGroup(DefaultGroup, DefaultServer1, DefaultServer2)
	inv.AddGroup(MixedGroup, fleet[0], ServerFail)
	inv.AddGroup(FleetGroup, fleet...)
	inv.Add(com.ResourceSetting, DefaultSetting)
	inv.Add(com.ResourceOneViewAppliance, DefaultAppliance)
	inv.Add(com.ResourceFilter, DefaultFilter)
	return inv
}

// FleetServers returns the ids of the ten ordinary servers of the default
// inventory, shaped like real COM server ids (product number + serial).
func FleetServers() []string {
	ids := make([]string, 10)
	for i := range ids {
		ids[i] = fmt.Sprintf("875765-S01+1M5125%02dAB", 10+i)
	}
	return ids
}

// Add adds (or keeps) a resource of the given type. The type may be given in
// v1 form ("compute-ops-mgmt/server") or as the seed's plural spelling of the
// OneView appliance type.
func (inv *Inventory) Add(resourceType, id string) {
	inv.put(resourceType, id, nil)
}

// AddGroup adds a group with the given member servers (replacing the
// members of an existing one). Members need not be in the inventory, but a
// child job on a missing server is created anyway: COM trusts its groups.
func (inv *Inventory) AddGroup(id string, members ...string) {
	inv.put(com.ResourceGroup, id, members)
}

// put adds or replaces a resource with optional members.
func (inv *Inventory) put(resourceType, id string, members []string) {
	t := canonicalType(resourceType)
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.items[t+"\x00"+id] = &Resource{Type: t, ID: id, Members: append([]string(nil), members...)}
}

// Remove removes a resource; later jobs on it get 404.
func (inv *Inventory) Remove(resourceType, id string) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	delete(inv.items, canonicalType(resourceType)+"\x00"+id)
}

// Get returns a copy of the resource, if held.
func (inv *Inventory) Get(resourceType, id string) (Resource, bool) {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	r, ok := inv.items[canonicalType(resourceType)+"\x00"+id]
	if !ok {
		return Resource{}, false
	}
	c := *r
	c.Members = append([]string(nil), r.Members...)
	return c, true
}

// Resources lists the inventory sorted by type then id (copies).
func (inv *Inventory) Resources() []Resource {
	inv.mu.RLock()
	out := make([]Resource, 0, len(inv.items))
	for _, r := range inv.items {
		c := *r
		c.Members = append([]string(nil), r.Members...)
		out = append(out, c)
	}
	inv.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Type != out[j].Type {
			return out[i].Type < out[j].Type
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// canonicalType maps the spellings of a resource type to the v1 form.
func canonicalType(t string) string {
	if t == com.ResourceOneViewAppliance+"s" {
		return com.ResourceOneViewAppliance
	}
	return t
}

// knownTypes are the resource types COM's jobs accept.
var knownTypes = map[string]string{ // v1 type → v1beta URI collection
	com.ResourceServer:           "servers",
	com.ResourceGroup:            "groups",
	com.ResourceSetting:          "settings",
	com.ResourceOneViewAppliance: "oneview-appliances",
	com.ResourceFilter:           "filters",
}

// typeFromCollection maps a v1beta URI collection ("groups") to the v1 type.
func typeFromCollection(c string) (string, bool) {
	for t, coll := range knownTypes {
		if coll == c {
			return t, true
		}
	}
	return "", false
}

// scenarioOf returns the scenario word in a resource id, or "".
func scenarioOf(id string) string {
	for _, w := range []string{"STALL", "FAIL", "ERROR", "APPROVAL"} {
		if strings.Contains(id, w) {
			return w
		}
	}
	return ""
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/topology"
)

func cmdSetup(ctx context.Context, env *Env, args []string) error {
	fs := newFlags(env, "setup", "setup [--replicas 1|3]")
	replicas := fs.Int("replicas", env.Config.Replicas, "replicas of streams and buckets (1, or 3 on a cluster)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	in, err := openInfra(ctx, env.Config, env.Logger, infraOptions{})
	if err != nil {
		return err
	}
	defer in.Close()
	rep, err := topology.Ensure(ctx, in.js, topology.Options{Replicas: *replicas})
	for _, l := range rep {
		fmt.Fprintln(env.Stdout, l)
	}
	return err
}

func cmdSim(ctx context.Context, env *Env, args []string) error {
	fs := newFlags(env, "sim", "sim [--addr 127.0.0.1:8181] [--pending 200ms] [--run 500ms] [--rate429 0] [--rate5xx 0] [--seed 1]")
	addr := fs.String("addr", "127.0.0.1:8181", "listen address")
	pending := fs.Duration("pending", 0, "how long a job stays PENDING (0: the simulator's default)")
	run := fs.Duration("run", 0, "how long a job RUNs (0: the simulator's default)")
	r429 := fs.Float64("rate429", 0, "share of calls answered 429")
	r5xx := fs.Float64("rate5xx", 0, "share of calls answered 5xx")
	seed := fs.Int64("seed", 1, "seed of the simulator's random draws")
	id := fs.String("client-id", comsim.DefaultClientID, "accepted client id")
	secret := fs.String("client-secret", comsim.DefaultClientSecret, "accepted client secret")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s := comsim.New(comsim.Options{
		Timing: comsim.Timing{PendingFor: *pending, RunFor: *run},
		Faults: comsim.Faults{Rate429: *r429, Rate5xx: *r5xx}, Seed: *seed,
		ClientID: *id, ClientSecret: *secret, Logger: env.Logger.With("component", "comsim"),
	})
	defer s.Close()
	base := "http://" + *addr
	fmt.Fprintf(env.Stdout, "COM simulator listening on %s\n\nPoint comjobs at it:\n"+
		"  export COMJOBS_COM_BASE_URL=%s\n  export COMJOBS_COM_TOKEN_URL=%s/token\n"+
		"  export COMJOBS_COM_CLIENT_ID=%s\n  export COMJOBS_COM_CLIENT_SECRET=%s\n\n", base, base, base, *id, *secret)
	return s.ListenAndServe(ctx, *addr)
}

func cmdTemplates(_ context.Context, env *Env, args []string) error {
	fs := newFlags(env, "templates", "templates [--json]")
	asJSON := fs.Bool("json", false, "print the catalog as JSON, parameter schemas included")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ts := com.Templates()
	if *asJSON {
		type row struct {
			ID, Name, Slug, ResourceType string
			Params                       json.RawMessage
			Required                     []string
			Deprecated                   string `json:",omitempty"`
			ExpectedDuration             string
		}
		var rows []row
		for _, t := range ts {
			rows = append(rows, row{t.ID, t.Name, t.Slug, t.ResourceType, t.Params, t.Required, t.Deprecated, t.ExpectedDuration.String()})
		}
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SLUG\tRESOURCE TYPE\tTEMPLATE ID\tPARAMETERS\tTYPICAL")
	for _, t := range ts {
		params := paramSummary(t)
		if t.Deprecated != "" {
			params += "  [deprecated: " + t.Deprecated + "]"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Slug, strings.TrimPrefix(t.ResourceType, "compute-ops-mgmt/"), t.ID, params, t.ExpectedDuration.Round(time.Minute))
	}
	return tw.Flush()
}

// paramSummary lists a template's parameters, required ones marked with *.
func paramSummary(t com.Template) string {
	var s struct {
		Properties map[string]json.RawMessage `json:"properties"`
	}
	_ = json.Unmarshal(t.Params, &s)
	req := map[string]bool{}
	for _, r := range t.Required {
		req[r] = true
	}
	var names []string
	for _, r := range t.Required {
		names = append(names, r+"*")
	}
	for n := range s.Properties {
		if !req[n] {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "-"
	}
	sort.Strings(names[len(t.Required):])
	return strings.Join(names, ",")
}

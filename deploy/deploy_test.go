package deploy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/comjobs/comjobs/consumer"
	"github.com/comjobs/comjobs/notify"
)

// metrics is every metric the dashboard and the alert rules may name. A
// "code" metric must be registered (as a string literal) by some comjobs
// package, so renaming it in code without updating deploy/ fails here; an
// "exporter" metric comes from prometheus-nats-exporter (-jsz=all).
var metrics = map[string]struct{ kind, source string }{
	"comjobs_consumer_requests_total":           {"counter", "code"},
	"comjobs_consumer_submitted_total":          {"counter", "code"},
	"comjobs_consumer_rejected_total":           {"counter", "code"},
	"comjobs_consumer_duplicates_total":         {"counter", "code"},
	"comjobs_consumer_retries_total":            {"counter", "code"},
	"comjobs_consumer_dead_letters_total":       {"counter", "code"},
	"comjobs_consumer_com_latency_seconds":      {"histogram", "code"},
	"comjobs_consumer_paused":                   {"gauge", "code"},
	"comjobs_consumer_alone_total":              {"counter", "code"},
	"com_requests_total":                        {"counter", "code"},
	"com_request_duration_seconds":              {"histogram", "code"},
	"com_ratelimit_remaining":                   {"gauge", "code"},
	"com_token_renewals_total":                  {"counter", "code"},
	"comjobs_tracker_jobs":                      {"gauge", "code"},
	"comjobs_tracker_detection_latency_seconds": {"histogram", "code"},
	"comjobs_tracker_events_published_total":    {"counter", "code"},
	"comjobs_tracker_leader":                    {"gauge", "code"},
	"comjobs_tracker_leadership_changes_total":  {"counter", "code"},
	"comjobs_tracker_webhooks_total":            {"counter", "code"},
	"comjobs_notifier_messages_total":           {"counter", "code"},
	"comjobs_notifier_dead_letters_total":       {"counter", "code"},
	"comjobs_notifier_paused":                   {"gauge", "code"},
	"comjobs_notifier_post_latency_seconds":     {"histogram", "code"},
	"jetstream_consumer_num_pending":            {"gauge", "exporter"},
}

// deployFiles returns every file under deploy/ whose name ends in one of exts.
func deployFiles(t *testing.T, exts ...string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && slices.Contains(exts, filepath.Ext(p)) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// yamlDocs decodes every document of a YAML file.
func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
	return docs
}

// get walks a decoded YAML/JSON value by map keys and slice indexes.
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			s, ok := v.([]any)
			if !ok || k >= len(s) {
				return nil
			}
			v = s[k]
		}
	}
	return v
}

func TestEveryFileParses(t *testing.T) {
	for _, p := range deployFiles(t, ".yaml", ".yml") {
		t.Run(p, func(t *testing.T) {
			if docs := yamlDocs(t, p); len(docs) == 0 {
				t.Fatal("no YAML documents")
			}
		})
	}
	for _, p := range deployFiles(t, ".json") {
		t.Run(p, func(t *testing.T) {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			var v any
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// k8sObjects returns every Kubernetes object under kubernetes/ by kind/name.
func k8sObjects(t *testing.T) map[string]map[string]any {
	t.Helper()
	objs := map[string]map[string]any{}
	paths, _ := filepath.Glob("kubernetes/*.yaml")
	for _, p := range paths {
		for _, d := range yamlDocs(t, p) {
			kind, _ := d["kind"].(string)
			name, _ := get(d, "metadata", "name").(string)
			if kind == "Kustomization" {
				continue
			}
			if d["apiVersion"] == nil || kind == "" || name == "" {
				t.Errorf("%s: object without apiVersion, kind or metadata.name: %v", p, d)
				continue
			}
			if ns := get(d, "metadata", "namespace"); kind != "Namespace" && ns != "comjobs" {
				t.Errorf("%s: %s/%s in namespace %v, want comjobs", p, kind, name, ns)
			}
			objs[kind+"/"+name] = d
		}
	}
	return objs
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	k := yamlDocs(t, "kubernetes/kustomization.yaml")[0]
	var listed []string
	for _, r := range k["resources"].([]any) {
		listed = append(listed, r.(string))
		if _, err := os.Stat(filepath.Join("kubernetes", r.(string))); err != nil {
			t.Errorf("kustomization lists %s: %v", r, err)
		}
	}
	paths, _ := filepath.Glob("kubernetes/*.yaml")
	for _, p := range paths {
		base := filepath.Base(p)
		if base == "kustomization.yaml" || base == "secret.example.yaml" {
			if slices.Contains(listed, base) {
				t.Errorf("kustomization must not list %s", base)
			}
			continue
		}
		if !slices.Contains(listed, base) {
			t.Errorf("%s is not in kustomization.yaml resources", base)
		}
	}
}

func TestSecretExampleHoldsOnlyPlaceholders(t *testing.T) {
	for _, d := range yamlDocs(t, "kubernetes/secret.example.yaml") {
		for k, v := range d["stringData"].(map[string]any) {
			if !strings.HasPrefix(v.(string), "REPLACE-ME") {
				t.Errorf("secret %v key %s: value is not a REPLACE-ME placeholder", get(d, "metadata", "name"), k)
			}
		}
		if d["data"] != nil {
			t.Errorf("secret %v: use stringData placeholders, not data", get(d, "metadata", "name"))
		}
	}
}

func TestRoleDeployments(t *testing.T) {
	objs := k8sObjects(t)
	secrets := map[string]bool{}
	for _, d := range yamlDocs(t, "kubernetes/secret.example.yaml") {
		secrets[get(d, "metadata", "name").(string)] = true
	}
	tests := []struct {
		role        string
		wantSecrets []string // mounted as files
		notSecrets  []string // must not reach this role
	}{
		{"consumer", []string{"comjobs-nats-consumer", "comjobs-nats-ca", "comjobs-com"}, []string{"comjobs-slack", "comjobs-webhook", "comjobs-nats-admin"}},
		{"tracker", []string{"comjobs-nats-tracker", "comjobs-nats-ca", "comjobs-com", "comjobs-webhook"}, []string{"comjobs-slack", "comjobs-nats-admin"}},
		{"notifier", []string{"comjobs-nats-notifier", "comjobs-nats-ca", "comjobs-slack"}, []string{"comjobs-com", "comjobs-webhook", "comjobs-nats-admin"}},
	}
	for _, tt := range tests {
		t.Run(tt.role, func(t *testing.T) {
			d := objs["Deployment/comjobs-"+tt.role]
			if d == nil {
				t.Fatalf("no Deployment comjobs-%s", tt.role)
			}
			if r := get(d, "spec", "replicas"); r != 2 {
				t.Errorf("replicas = %v, want 2", r)
			}
			pod := get(d, "spec", "template", "spec")
			if get(pod, "securityContext", "runAsNonRoot") != true {
				t.Error("pod securityContext.runAsNonRoot is not true")
			}
			c := get(pod, "containers", 0)
			args, _ := json.Marshal(get(c, "args"))
			if want := `["run","--roles","` + tt.role + `"]`; string(args) != want {
				t.Errorf("args = %s, want %s", args, want)
			}
			for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
				if p := get(c, probe, "httpGet", "path"); p != path {
					t.Errorf("%s path = %v, want %s", probe, p, path)
				}
			}
			for _, r := range []string{"requests", "limits"} {
				for _, k := range []string{"cpu", "memory"} {
					if get(c, "resources", r, k) == nil {
						t.Errorf("resources.%s.%s missing", r, k)
					}
				}
			}
			if get(c, "securityContext", "readOnlyRootFilesystem") != true || get(c, "securityContext", "allowPrivilegeEscalation") != false {
				t.Error("container securityContext must set readOnlyRootFilesystem true and allowPrivilegeEscalation false")
			}
			grace, _ := get(pod, "terminationGracePeriodSeconds").(int)
			if grace < 40 {
				t.Errorf("terminationGracePeriodSeconds = %d, want >= 40 (drain is bounded by 30s)", grace)
			}
			var mounted []string
			for _, v := range get(pod, "volumes").([]any) {
				if s, ok := get(v, "secret", "secretName").(string); ok {
					mounted = append(mounted, s)
					if !secrets[s] {
						t.Errorf("secret %s is not described in secret.example.yaml", s)
					}
				}
				if cm, ok := get(v, "configMap", "name").(string); ok && objs["ConfigMap/"+cm] == nil {
					t.Errorf("configMap %s does not exist", cm)
				}
			}
			for _, s := range tt.wantSecrets {
				if !slices.Contains(mounted, s) {
					t.Errorf("secret %s not mounted", s)
				}
			}
			for _, s := range tt.notSecrets {
				if slices.Contains(mounted, s) {
					t.Errorf("secret %s must not be mounted by %s", s, tt.role)
				}
			}
			for _, e := range get(c, "envFrom").([]any) {
				if cm := get(e, "configMapRef", "name").(string); objs["ConfigMap/"+cm] == nil {
					t.Errorf("envFrom configMap %s does not exist", cm)
				}
			}
		})
	}
	if job := objs["Job/comjobs-setup"]; job == nil {
		t.Error("no setup Job")
	} else if args, _ := json.Marshal(get(job, "spec", "template", "spec", "containers", 0, "args")); string(args) != `["setup"]` {
		t.Errorf("setup job args = %s", args)
	}
	if svc := objs["Service/comjobs-tracker"]; svc == nil || get(svc, "spec", "selector", "app.kubernetes.io/component") != "tracker" {
		t.Error("Service comjobs-tracker must select the tracker pods")
	}
}

// knownSettings reads the COMJOBS_* names cmd/comjobs accepts.
func knownSettings(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../cmd/comjobs/config.go")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, m := range regexp.MustCompile(`envconfig:"([A-Z0-9_]+)"([^\n]*)`).FindAllStringSubmatch(string(b), -1) {
		known["COMJOBS_"+m[1]] = true
		if strings.Contains(m[2], `secret:"true"`) {
			known["COMJOBS_"+m[1]+"_FILE"] = true
		}
	}
	if len(known) < 10 {
		t.Fatalf("found only %d settings in cmd/comjobs/config.go", len(known))
	}
	return known
}

func TestSettingsAreRealAndFilesLoad(t *testing.T) {
	known := knownSettings(t)
	known["COMJOBS_ROLES"] = true // the systemd unit's own variable, passed as --roles
	check := func(where, name string) {
		if strings.HasPrefix(name, "COMJOBS_") && !known[name] {
			t.Errorf("%s sets %s, which comjobs does not read", where, name)
		}
	}
	objs := k8sObjects(t)
	for key, o := range objs {
		if strings.HasPrefix(key, "ConfigMap/") {
			for k := range o["data"].(map[string]any) {
				check(key, k)
			}
		}
		for _, c := range asSlice(get(o, "spec", "template", "spec", "containers")) {
			for _, e := range asSlice(get(c, "env")) {
				check(key, get(e, "name").(string))
			}
		}
	}
	env, err := os.ReadFile("systemd/comjobs.env")
	if err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile("systemd/comjobs.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(env)+"\n"+strings.ReplaceAll(string(unit), "Environment=", "\n"), "\n") {
		if k, _, ok := strings.Cut(strings.TrimSpace(line), "="); ok && !strings.HasPrefix(k, "#") {
			check("systemd", k)
		}
	}

	files := objs["ConfigMap/comjobs-files"]["data"].(map[string]any)
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content.(string)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := consumer.LoadPolicy(filepath.Join(dir, "policy.json")); err != nil {
		t.Errorf("example policy.json: %v", err)
	}
	if _, err := notify.LoadRoutes(filepath.Join(dir, "routes.json")); err != nil {
		t.Errorf("example routes.json: %v", err)
	}
}

func asSlice(v any) []any { s, _ := v.([]any); return s }

// promMetrics returns the metric names a PromQL expression selects.
func promMetrics(expr string) []string {
	for _, re := range []string{`"[^"]*"`, `\{[^}]*\}`, `\[[^\]]*\]`, `\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`} {
		expr = regexp.MustCompile(re).ReplaceAllString(expr, " ")
	}
	keywords := map[string]bool{"by": true, "without": true, "and": true, "or": true, "unless": true, "bool": true, "offset": true, "on": true, "ignoring": true}
	var out []string
	ident := regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	for _, loc := range ident.FindAllStringIndex(expr, -1) {
		name := expr[loc[0]:loc[1]]
		rest := strings.TrimLeft(expr[loc[1]:], " \t\n")
		if strings.HasPrefix(rest, "(") || keywords[name] || (loc[0] > 0 && (expr[loc[0]-1] == '.' || expr[loc[0]-1] >= '0' && expr[loc[0]-1] <= '9')) {
			continue
		}
		out = append(out, name)
	}
	return out
}

// checkMetric reports whether name is in the table, directly or as a
// histogram's _bucket/_sum/_count series, and returns the table name.
func checkMetric(name string) (string, bool) {
	if _, ok := metrics[name]; ok {
		return name, true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok && metrics[base].kind == "histogram" {
			return base, true
		}
	}
	return "", false
}

func TestDashboardMetrics(t *testing.T) {
	b, err := os.ReadFile("grafana/comjobs-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		SchemaVersion int    `json:"schemaVersion"`
		UID           string `json:"uid"`
		Panels        []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.SchemaVersion < 36 || d.UID == "" {
		t.Errorf("schemaVersion %d, uid %q: want >= 36 and a uid", d.SchemaVersion, d.UID)
	}
	used := map[string]bool{}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel %q: duplicate id %d", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			names := promMetrics(tg.Expr)
			if len(names) == 0 {
				t.Errorf("panel %q: no metric in %q", p.Title, tg.Expr)
			}
			for _, n := range names {
				base, ok := checkMetric(n)
				if !ok {
					t.Errorf("panel %q: metric %s is not in the metrics table", p.Title, n)
				}
				used[base] = true
			}
		}
	}
	for name := range metrics {
		if !used[name] {
			t.Errorf("metric %s has no dashboard panel", name)
		}
	}
}

func TestMetricsExistInCode(t *testing.T) {
	var src bytes.Buffer
	err := filepath.WalkDir("..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "deploy" || strings.HasPrefix(d.Name(), ".")) && p != ".." {
			return filepath.SkipDir
		}
		if strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			src.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range metrics {
		if m.source == "code" && !bytes.Contains(src.Bytes(), []byte(`"`+name+`"`)) {
			t.Errorf("metric %s is not registered by any comjobs package: renamed? update deploy/ (dashboard, alerts, this table)", name)
		}
	}
}

func TestAlertRules(t *testing.T) {
	doc := yamlDocs(t, "prometheus/alerts.yaml")[0]
	var alerts []string
	for _, g := range asSlice(doc["groups"]) {
		for _, r := range asSlice(get(g, "rules")) {
			name, _ := get(r, "alert").(string)
			expr, _ := get(r, "expr").(string)
			if name == "" || expr == "" {
				t.Errorf("rule without alert or expr: %v", r)
				continue
			}
			alerts = append(alerts, name)
			if _, ok := r.(map[string]any)["for"]; !ok {
				t.Errorf("%s: no for", name)
			}
			if s := get(r, "labels", "severity"); s != "warning" && s != "critical" {
				t.Errorf("%s: labels.severity = %v, want warning or critical", name, s)
			}
			if s, _ := get(r, "annotations", "summary").(string); s == "" {
				t.Errorf("%s: no annotations.summary", name)
			}
			for _, n := range promMetrics(expr) {
				if _, ok := checkMetric(n); !ok {
					t.Errorf("%s: metric %s is not in the metrics table", name, n)
				}
			}
		}
	}
	sort.Strings(alerts)
	for _, want := range []string{"ComjobsConsumerDeadLetters", "ComjobsNotifierDeadLetters", "ComjobsRequestBacklog", "ComjobsCOMTokenFailures", "ComjobsCOMRateLimited", "ComjobsTrackerLeadershipFlapping", "ComjobsNotifierPaused", "ComjobsConsumerPaused"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("alert %s missing (have %v)", want, alerts)
		}
	}
}

func TestPromMetricsExtraction(t *testing.T) {
	tests := []struct {
		name, expr string
		want       []string
	}{
		{"ratio", `sum(rate(com_requests_total{code="429"}[5m])) / sum(rate(com_requests_total[5m])) > 0.1`, []string{"com_requests_total", "com_requests_total"}},
		{"quantile", `histogram_quantile(0.95, sum by (le, route) (rate(com_request_duration_seconds_bucket[$__rate_interval])))`, []string{"com_request_duration_seconds_bucket"}},
		{"label values ignored", `max by (state) (comjobs_tracker_jobs{state=~"RUNNING|foo_bar"}) == 1`, []string{"comjobs_tracker_jobs"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := promMetrics(tt.expr); !slices.Equal(got, tt.want) {
				t.Errorf("promMetrics = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("systemd/comjobs.service")
	if err != nil {
		t.Fatal(err)
	}
	kv := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			kv[k] = append(kv[k], v)
		}
	}
	for k, want := range map[string]string{
		"ProtectSystem": "strict", "NoNewPrivileges": "yes", "StateDirectory": "comjobs",
		"Restart": "on-failure", "TimeoutStopSec": "45s", "DynamicUser": "yes",
	} {
		if !slices.Contains(kv[k], want) {
			t.Errorf("%s=%s missing (have %v)", k, want, kv[k])
		}
	}
	for _, lc := range kv["LoadCredential"] {
		name, _, _ := strings.Cut(lc, ":")
		if !slices.ContainsFunc(kv["Environment"], func(e string) bool { return strings.HasSuffix(e, "=%d/"+name) }) {
			t.Errorf("credential %s is loaded but no COMJOBS_*_FILE points at %%d/%s", name, name)
		}
	}
}

func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("docker/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"FROM golang:${GO_VERSION} AS build", "ARG GO_VERSION=1.26", "CGO_ENABLED=0", "-trimpath", "-X main.version=", "distroless/static", "USER 65532:65532", "docker build -f deploy/docker/Dockerfile"} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

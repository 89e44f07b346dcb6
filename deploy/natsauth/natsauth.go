// Package natsauth turns deploy/nats/permissions.json — the one place that
// says what each comjobs NATS user may publish and subscribe to — into the
// NATS decentralised-auth artefacts an operator deploys: an operator, a
// system account and the COMJOBS account (JetStream enabled), a signed user
// JWT per user packed into a .creds file (what COMJOBS_NATS_CREDS points
// at), and auth.conf, the nats-server include that trusts the operator and
// preloads the accounts (memory resolver).
//
// Permissions are written in the spec with a few shorthands (pull,
// kv_read_write, kv_read, jetstream_client) that expand to the JetStream API
// subjects nats.go actually uses; Expand documents the expansion. The
// deploy package test runs every role's real operations against an embedded
// nats-server authorised by these artefacts, so a missing or excess subject
// is caught there.
package natsauth

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// Spec is the content of permissions.json.
type Spec struct {
	// Operator names the NATS operator.
	Operator string `json:"operator"`
	// Account is the one application account all comjobs users live in.
	Account AccountSpec `json:"account"`
	// Users, each issued its own .creds file.
	Users []UserSpec `json:"users"`
}

// AccountSpec names the application account and bounds its JetStream use.
type AccountSpec struct {
	Name      string        `json:"name"`
	JetStream JetStreamSpec `json:"jetstream"`
}

// JetStreamSpec bounds the account's JetStream storage, in bytes (-1: no limit).
type JetStreamSpec struct {
	DiskBytes   int64 `json:"disk_bytes"`
	MemoryBytes int64 `json:"memory_bytes"`
}

// UserSpec is one NATS user. Pub and Sub are taken literally; the
// shorthands add to Pub.Allow and Sub.Allow as Expand describes.
type UserSpec struct {
	Name string `json:"name"`
	// Why says, for the operator reading the spec, why the user needs what it has.
	Why string `json:"why"`
	// JetStreamClient: the user binds to existing streams, buckets and
	// consumers (read-only INFO calls) and receives replies on _INBOX.>.
	JetStreamClient bool `json:"jetstream_client,omitempty"`
	// Pull lists the durable pull consumers the user fetches from and acks.
	Pull []PullSpec `json:"pull,omitempty"`
	// KVReadWrite and KVRead list key-value buckets by name.
	KVReadWrite []string `json:"kv_read_write,omitempty"`
	KVRead      []string `json:"kv_read,omitempty"`
	Pub         Rule     `json:"pub"`
	Sub         Rule     `json:"sub"`
}

// PullSpec names a durable consumer on a stream.
type PullSpec struct {
	Stream  string `json:"stream"`
	Durable string `json:"durable"`
}

// Rule is an allow and a deny list of subjects; deny wins.
type Rule struct {
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
}

// LoadSpec reads and validates a permissions.json. Unknown fields are an
// error, so a misspelt shorthand cannot silently grant nothing.
func LoadSpec(path string) (Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return Spec{}, fmt.Errorf("load permissions: %w", err)
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	var s Spec
	if err := dec.Decode(&s); err != nil {
		return Spec{}, fmt.Errorf("load permissions %s: %w", path, err)
	}
	if err := s.Validate(); err != nil {
		return Spec{}, fmt.Errorf("load permissions %s: %w", path, err)
	}
	return s, nil
}

// Validate checks that names are present and unique and that no subject is
// empty or holds whitespace.
func (s Spec) Validate() error {
	var errs []error
	if s.Operator == "" {
		errs = append(errs, errors.New("operator: empty"))
	}
	if s.Account.Name == "" || s.Account.Name == SystemAccount {
		errs = append(errs, fmt.Errorf("account.name: must be set and not %q", SystemAccount))
	}
	seen := map[string]bool{}
	for i, u := range s.Users {
		switch {
		case u.Name == "" || strings.ContainsAny(u.Name, " /\\.\t\n"):
			errs = append(errs, fmt.Errorf("users[%d].name %q: must be a plain file name", i, u.Name))
		case seen[u.Name]:
			errs = append(errs, fmt.Errorf("users[%d].name %q: duplicate", i, u.Name))
		}
		seen[u.Name] = true
		p := u.Expand()
		for _, subj := range slices.Concat(p.Pub.Allow, p.Pub.Deny, p.Sub.Allow, p.Sub.Deny) {
			if subj == "" || strings.ContainsAny(subj, " \t\r\n") || strings.Contains(subj, "..") {
				errs = append(errs, fmt.Errorf("user %s: bad subject %q", u.Name, subj))
			}
		}
		for _, pl := range u.Pull {
			if pl.Stream == "" || pl.Durable == "" {
				errs = append(errs, fmt.Errorf("user %s: pull needs stream and durable", u.Name))
			}
		}
	}
	return errors.Join(errs...)
}

// Expand returns the user's permissions with every shorthand spelled out:
//
//   - jetstream_client: pub $JS.API.INFO, $JS.API.STREAM.INFO.*,
//     $JS.API.CONSUMER.INFO.*.* (what binding and `comjobs run`'s topology
//     check call); sub _INBOX.> (replies to requests and publish acks).
//   - pull {S, D}: pub $JS.API.CONSUMER.MSG.NEXT.S.D (fetch) and
//     $JS.ACK.S.D.> (ack, nak, in-progress, term), plus the v2 ack form
//     $JS.ACK.*.*.S.D.> that servers send with the js_ack_fc_v2 feature flag.
//   - kv_read B: pub $JS.API.DIRECT.GET.KV_B.> and
//     $JS.API.STREAM.MSG.GET.KV_B (Get), $JS.API.CONSUMER.CREATE.KV_B[.>]
//     and $JS.API.CONSUMER.DELETE.KV_B.* (the ordered consumer behind Watch
//     and Keys), $JS.FC.KV_B.> (its flow-control replies).
//   - kv_read_write B: kv_read B plus pub $KV.B.> (Put, Create, Update,
//     Delete, Purge).
func (u UserSpec) Expand() jwt.Permissions {
	var p jwt.Permissions
	if u.JetStreamClient {
		p.Pub.Allow.Add("$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.CONSUMER.INFO.*.*")
		p.Sub.Allow.Add("_INBOX.>")
	}
	for _, pl := range u.Pull {
		p.Pub.Allow.Add(
			"$JS.API.CONSUMER.MSG.NEXT."+pl.Stream+"."+pl.Durable,
			"$JS.ACK."+pl.Stream+"."+pl.Durable+".>",
			"$JS.ACK.*.*."+pl.Stream+"."+pl.Durable+".>",
		)
	}
	kvRead := func(b string) {
		s := "KV_" + b
		p.Pub.Allow.Add(
			"$JS.API.DIRECT.GET."+s+".>",
			"$JS.API.STREAM.MSG.GET."+s,
			"$JS.API.CONSUMER.CREATE."+s,
			"$JS.API.CONSUMER.CREATE."+s+".>",
			"$JS.API.CONSUMER.DELETE."+s+".*",
			"$JS.FC."+s+".>",
		)
	}
	for _, b := range u.KVReadWrite {
		p.Pub.Allow.Add("$KV." + b + ".>")
		kvRead(b)
	}
	for _, b := range u.KVRead {
		kvRead(b)
	}
	p.Pub.Allow.Add(u.Pub.Allow...)
	p.Pub.Deny.Add(u.Pub.Deny...)
	p.Sub.Allow.Add(u.Sub.Allow...)
	p.Sub.Deny.Add(u.Sub.Deny...)
	return p
}

// SystemAccount is the name of the NATS system account Issue creates.
const SystemAccount = "SYS"

// Keys are the signing identities. Keep them (and the directory
// LoadOrCreateKeys reads) secret and backed up: whoever holds the account
// key can mint users.
type Keys struct {
	Operator nkeys.KeyPair
	System   nkeys.KeyPair
	Account  nkeys.KeyPair
}

// LoadOrCreateKeys reads operator.nk, system.nk and account.nk (nkey seeds)
// from dir, creating any that are missing with mode 0600, so reissuing
// creds keeps the same operator and accounts.
func LoadOrCreateKeys(dir string) (Keys, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Keys{}, fmt.Errorf("keys dir: %w", err)
	}
	load := func(name string, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, error) {
		path := filepath.Join(dir, name)
		seed, err := os.ReadFile(path)
		if err == nil {
			kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
			if err != nil {
				return nil, fmt.Errorf("key %s: not an nkey seed: %w", path, err)
			}
			return kp, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("key %s: %w", path, err)
		}
		kp, err := create()
		if err != nil {
			return nil, fmt.Errorf("create key %s: %w", name, err)
		}
		seed, err = kp.Seed()
		if err != nil {
			return nil, fmt.Errorf("create key %s: %w", name, err)
		}
		if err := os.WriteFile(path, append(seed, '\n'), 0o600); err != nil {
			return nil, fmt.Errorf("write key %s: %w", path, err)
		}
		return kp, nil
	}
	var k Keys
	var err error
	if k.Operator, err = load("operator.nk", nkeys.CreateOperator); err != nil {
		return Keys{}, err
	}
	if k.System, err = load("system.nk", nkeys.CreateAccount); err != nil {
		return Keys{}, err
	}
	if k.Account, err = load("account.nk", nkeys.CreateAccount); err != nil {
		return Keys{}, err
	}
	return k, nil
}

// Issued holds the artefacts Issue produces.
type Issued struct {
	// AuthConf is the nats-server include: operator, system_account,
	// resolver MEMORY and resolver_preload. It holds only public JWTs.
	AuthConf []byte
	// Creds maps user name to its .creds file content (JWT and seed: secret).
	// The system account's user is "sys".
	Creds map[string][]byte
	// AccountPublicKey is the COMJOBS account's public key.
	AccountPublicKey string
}

// Issue signs the operator, the system and application accounts and every
// user in s. It fails if any JWT does not validate.
func Issue(s Spec, k Keys) (Issued, error) {
	if err := s.Validate(); err != nil {
		return Issued{}, err
	}
	opPub, err := k.Operator.PublicKey()
	if err != nil {
		return Issued{}, fmt.Errorf("operator key: %w", err)
	}
	sysPub, err := k.System.PublicKey()
	if err != nil {
		return Issued{}, fmt.Errorf("system key: %w", err)
	}
	accPub, err := k.Account.PublicKey()
	if err != nil {
		return Issued{}, fmt.Errorf("account key: %w", err)
	}

	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = s.Operator
	oc.SystemAccount = sysPub
	opJWT, err := oc.Encode(k.Operator)
	if err != nil {
		return Issued{}, fmt.Errorf("encode operator: %w", err)
	}

	sc := jwt.NewAccountClaims(sysPub)
	sc.Name = SystemAccount
	sysJWT, err := sc.Encode(k.Operator)
	if err != nil {
		return Issued{}, fmt.Errorf("encode system account: %w", err)
	}

	ac := jwt.NewAccountClaims(accPub)
	ac.Name = s.Account.Name
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{
		DiskStorage:   s.Account.JetStream.DiskBytes,
		MemoryStorage: s.Account.JetStream.MemoryBytes,
		Streams:       jwt.NoLimit,
		Consumer:      jwt.NoLimit,
		MaxAckPending: jwt.NoLimit,
	}
	accJWT, err := ac.Encode(k.Operator)
	if err != nil {
		return Issued{}, fmt.Errorf("encode account %s: %w", s.Account.Name, err)
	}

	out := Issued{Creds: map[string][]byte{}, AccountPublicKey: accPub}
	sysCreds, err := userCreds("sys", jwt.Permissions{}, k.System)
	if err != nil {
		return Issued{}, err
	}
	out.Creds["sys"] = sysCreds
	for _, u := range s.Users {
		c, err := userCreds(u.Name, u.Expand(), k.Account)
		if err != nil {
			return Issued{}, err
		}
		out.Creds[u.Name] = c
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# Generated by deploy/natsauth/mkauth from permissions.json. Public JWTs only; no secrets.\n")
	fmt.Fprintf(&b, "# Regenerate and reload (nats-server --signal reload) after changing accounts.\n")
	fmt.Fprintf(&b, "operator: %q\n", opJWT)
	fmt.Fprintf(&b, "system_account: %s\n", sysPub)
	fmt.Fprintf(&b, "resolver: MEMORY\n")
	fmt.Fprintf(&b, "resolver_preload: {\n")
	fmt.Fprintf(&b, "  # %s\n  %s: %q\n", SystemAccount, sysPub, sysJWT)
	fmt.Fprintf(&b, "  # %s\n  %s: %q\n", s.Account.Name, accPub, accJWT)
	fmt.Fprintf(&b, "}\n")
	out.AuthConf = []byte(b.String())
	return out, nil
}

func userCreds(name string, p jwt.Permissions, account nkeys.KeyPair) ([]byte, error) {
	ukp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("user %s: %w", name, err)
	}
	upub, err := ukp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("user %s: %w", name, err)
	}
	seed, err := ukp.Seed()
	if err != nil {
		return nil, fmt.Errorf("user %s: %w", name, err)
	}
	uc := jwt.NewUserClaims(upub)
	uc.Name = name
	uc.Permissions = p
	var vr jwt.ValidationResults
	uc.Validate(&vr)
	if errs := vr.Errors(); len(errs) > 0 {
		return nil, fmt.Errorf("user %s: %w", name, errors.Join(errs...))
	}
	ujwt, err := uc.Encode(account)
	if err != nil {
		return nil, fmt.Errorf("encode user %s: %w", name, err)
	}
	creds, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		return nil, fmt.Errorf("format creds %s: %w", name, err)
	}
	return creds, nil
}

// Write stores is under dir: auth.conf (0644) and creds/<user>.creds
// (0600), replacing earlier files.
func (is Issued) Write(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "creds"), 0o700); err != nil {
		return fmt.Errorf("write auth: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "auth.conf"), is.AuthConf, 0o644); err != nil {
		return fmt.Errorf("write auth.conf: %w", err)
	}
	for name, c := range is.Creds {
		if err := os.WriteFile(filepath.Join(dir, "creds", name+".creds"), c, 0o600); err != nil {
			return fmt.Errorf("write creds %s: %w", name, err)
		}
	}
	return nil
}

// Command mkauth issues comjobs' NATS operator, accounts and user
// credentials from deploy/nats/permissions.json:
//
//	go run ./deploy/natsauth/mkauth -spec deploy/nats/permissions.json -keys ./nats-keys -out ./nats-auth
//
// It reuses the signing keys in -keys (creating missing ones), writes
// -out/auth.conf (include it from nats-server.conf) and
// -out/creds/<user>.creds, and prints each user's expanded permissions.
// Keep -keys and -out/creds secret.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/comjobs/comjobs/deploy/natsauth"
)

func main() {
	spec := flag.String("spec", "deploy/nats/permissions.json", "permissions spec")
	keys := flag.String("keys", "nats-keys", "directory of operator/account nkey seeds (created if missing; secret)")
	out := flag.String("out", "nats-auth", "output directory for auth.conf and creds/")
	flag.Parse()
	if err := run(*spec, *keys, *out); err != nil {
		fmt.Fprintln(os.Stderr, "mkauth:", err)
		os.Exit(1)
	}
}

func run(specPath, keysDir, outDir string) error {
	s, err := natsauth.LoadSpec(specPath)
	if err != nil {
		return err
	}
	k, err := natsauth.LoadOrCreateKeys(keysDir)
	if err != nil {
		return err
	}
	is, err := natsauth.Issue(s, k)
	if err != nil {
		return err
	}
	if err := is.Write(outDir); err != nil {
		return err
	}
	fmt.Printf("account %s = %s\nwrote %s/auth.conf and %d creds files under %s/creds\n",
		s.Account.Name, is.AccountPublicKey, outDir, len(is.Creds), outDir)
	for _, u := range s.Users {
		p := u.Expand()
		fmt.Printf("\n%s:\n  pub allow: %s\n", u.Name, strings.Join(p.Pub.Allow, " "))
		if len(p.Pub.Deny) > 0 {
			fmt.Printf("  pub deny:  %s\n", strings.Join(p.Pub.Deny, " "))
		}
		fmt.Printf("  sub allow: %s\n", strings.Join(p.Sub.Allow, " "))
	}
	return nil
}

package main

import (
	"context"
	"errors"
)

func cmdDemo(ctx context.Context, env *Env, args []string) error { return errors.New("demo: not yet") }

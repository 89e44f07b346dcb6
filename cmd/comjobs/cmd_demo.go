package main

import (
	"context"
	"errors"
)

func cmdDemo(ctx context.Context, env *Env, args []string) error { return errors.New("demo: not yet") }
func cmdSubmit(ctx context.Context, env *Env, args []string) error { return errors.New("submit: not yet") }
func cmdTail(ctx context.Context, env *Env, args []string) error { return errors.New("tail: not yet") }
func cmdJobs(ctx context.Context, env *Env, args []string) error { return errors.New("jobs: not yet") }
func cmdDLQ(ctx context.Context, env *Env, args []string) error { return errors.New("dlq: not yet") }
func cmdPause(ctx context.Context, env *Env, args []string) error { return errors.New("pause: not yet") }
func cmdResume(ctx context.Context, env *Env, args []string) error { return errors.New("resume: not yet") }

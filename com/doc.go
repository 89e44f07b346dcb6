// Package com speaks to HPE Compute Ops Management: the compiled-in job
// template catalog, and a client for the jobs API (v1, v1beta3, v1beta2) with
// OAuth2 client credentials, shared rate-limit pacing and typed errors that
// say, once, whether a failure is permanent, transient or a configuration
// fault.
package com

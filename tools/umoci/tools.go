//go:build tools

// Package tools pins umoci's command for `go build github.com/opencontainers/umoci/cmd/umoci`.
package tools

import _ "github.com/opencontainers/umoci/cmd/umoci"

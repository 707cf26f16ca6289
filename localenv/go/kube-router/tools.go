//go:build tools

// Package tools records the kube-router command this module builds, so that go mod tidy keeps its dependencies.
package tools

import (
	_ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
)

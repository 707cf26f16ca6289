//go:build tools

// Package tools keeps the Gateway API module required, so go mod tidy records its checksum.
package tools

import _ "sigs.k8s.io/gateway-api/apis/v1"

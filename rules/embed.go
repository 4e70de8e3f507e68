// Package rules holds imwatch's default Prometheus rule files for the IM
// link, embedded so that `imwatch up` can install them.
package rules

import "embed"

// FS holds the default rule files (*.yml).
//
//go:embed *.yml
var FS embed.FS

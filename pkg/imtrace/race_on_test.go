//go:build race

package imtrace

// raceOn: under the race detector sync.Pool drops a quarter of what is put
// back, by design, so allocation counts of pooled paths say nothing.
const raceOn = true

//go:build !race

package imtrace

const raceOn = false

// Package procmem gives back to the kernel the pages of the imwatch binary that
// a process only needed while it started. One imwatch binary links every part
// (the center's Prometheus packages pull in the cloud SDKs), and their package
// initialisers leave several megabytes of code and read-only data mapped in every
// process, the small `imwatch agent` included. Those pages are clean copies of the
// executable file: dropping them loses nothing, and what the process still runs
// comes back from the page cache on its next use.
package procmem

// Stats says what ReleaseStartupPages found and dropped.
type Stats struct {
	Mappings int   // read-only mappings of the executable that were released
	Bytes    int64 // their total size
}

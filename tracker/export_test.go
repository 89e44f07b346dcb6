package tracker

// SetPageSize makes t list n jobs a page instead of COM's maximum, so tests
// cross page boundaries with few jobs. Call it before Run.
func SetPageSize(t *Tracker, n int) { t.pageSize = n }

//! Owned by the SCSI layer work; placeholder.

//! Server-certificate requirements report (filled in below).

//! How the driver reaches the device. Today: vhost-user over a unix socket.

pub mod vhost_user;

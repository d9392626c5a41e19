//! The list of addresses Bitrix24 publishes for its event-delivery servers.

//! tidings-broker: the realtime plane (embedded rumqttd, connection guard, presence,
//! persistence worker). Built by the realtime issue; see ARCHITECTURE.md.

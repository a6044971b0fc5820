//! The topic ACL the front door applies: [`tidings_store::acl`], shared with the
//! auth/ACL hooks an external broker calls (see ARCHITECTURE.md). What stays here is the
//! property test that needs an MQTT topic matcher (rumqttc's), which the store crate
//! does not depend on.

pub use tidings_store::acl::*;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rumqttc::mqttbytes::matches;
    use tidings_store::MembershipIndex;

    // Fixed ids so the filter strategy can name them.
    const ME: &str = "01HZZZZZZZZZZZZZZZZZZZZZZ1";
    const FRIEND: &str = "01HZZZZZZZZZZZZZZZZZZZZZZ2";
    const STRANGER: &str = "01HZZZZZZZZZZZZZZZZZZZZZZ3";
    const SHARED: &str = "01HZZZZZZZZZZZZZZZZZZZZZZ4";
    const PRIVATE: &str = "01HZZZZZZZZZZZZZZZZZZZZZZ5";

    fn filter() -> impl Strategy<Value = String> {
        let level = proptest::sample::select(vec![
            "u", "c", "+", "#", "in", "out", "p", "t", "m", "$share", "", ME, FRIEND, STRANGER,
            SHARED, PRIVATE,
        ]);
        proptest::collection::vec(level, 1..6).prop_map(|levels| levels.join("/"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// Whatever filter the ACL grants, MQTT's own matching rule never lets it reach a
        /// topic the user has no right to read.
        #[test]
        fn granted_filters_never_match_forbidden_topics(filter in filter()) {
            let index = MembershipIndex::from_pairs([
                (SHARED.to_string(), ME.to_string()),
                (SHARED.to_string(), FRIEND.to_string()),
                (PRIVATE.to_string(), FRIEND.to_string()),
                (PRIVATE.to_string(), STRANGER.to_string()),
            ]);
            if may_subscribe(ME, &filter, &index) {
                let forbidden = [
                    format!("u/{FRIEND}/in"),
                    format!("u/{STRANGER}/in/c"),
                    format!("u/{FRIEND}/out"),
                    format!("u/{ME}/out"),
                    format!("u/{STRANGER}/p"),
                    format!("c/{PRIVATE}/m"),
                    format!("c/{PRIVATE}/t/{FRIEND}"),
                ];
                for topic in forbidden {
                    prop_assert!(!matches(&topic, &filter), "{} reaches {}", filter, topic);
                }
            }
        }
    }
}

//! Micro-batching per resource: a partition's events, split by the
//! resource they are keyed by, each resource's in arrival order. One
//! resource's events are then handled under one lease and one fenced
//! write, however many arrived.

/// Groups `items` by `resource`, keeping each resource's items in their
/// order, and the resources in the order of their first item.
pub fn group_by_resource<T, K, F>(items: impl IntoIterator<Item = T>, resource: F) -> Vec<(K, Vec<T>)>
where
    K: PartialEq + Clone,
    F: Fn(&T) -> &K,
{
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    for item in items {
        // A batch holds few resources (a hot one, or a few hundred across
        // a partition): a scan beats hashing every key.
        match groups.iter_mut().find(|(key, _)| key == resource(&item)) {
            Some((_, group)) => group.push(item),
            None => groups.push((resource(&item).clone(), vec![item])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Every item lands in its resource's group, in arrival order, and
        /// no resource has two groups.
        #[test]
        fn each_resource_keeps_its_order(items in prop::collection::vec((0u8..5, any::<u32>()), 0..200)) {
            let groups = group_by_resource(items.iter().enumerate(), |(_, (resource, _))| resource);
            let mut seen = Vec::new();
            for (resource, group) in &groups {
                prop_assert!(!seen.contains(resource));
                seen.push(*resource);
                prop_assert!(group.iter().all(|(_, (r, _))| r == resource));
                prop_assert!(group.windows(2).all(|w| w[0].0 < w[1].0));
            }
            prop_assert_eq!(groups.iter().map(|(_, g)| g.len()).sum::<usize>(), items.len());
        }
    }
}

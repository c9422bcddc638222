//! Deciding whether an object in the cache already is what we would apply, so a converged
//! session costs no API writes. The server adds defaults and status; what we set must be
//! there unchanged (quantities compared by value: the server rewrites `0.5` as `500m`).

use serde_json::Value;

/// True when every field of `desired` is present in `actual` with the same value. Objects
/// may have extra keys in `actual`; lists must have the same length, item by item.
pub fn is_subset(desired: &Value, actual: &Value) -> bool {
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => d.iter().all(|(k, dv)| {
            a.get(k).is_some_and(|av| is_subset(dv, av)) || (dv.is_null() && !a.contains_key(k))
        }),
        (Value::Array(d), Value::Array(a)) => {
            d.len() == a.len() && d.iter().zip(a).all(|(dv, av)| is_subset(dv, av))
        }
        (Value::String(d), Value::String(a)) => d == a || same_quantity(d, a),
        (Value::Number(d), Value::String(a)) | (Value::String(a), Value::Number(d)) => {
            same_quantity(&d.to_string(), a)
        }
        _ => desired == actual,
    }
}

fn same_quantity(a: &str, b: &str) -> bool {
    match (quantity_value(a), quantity_value(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

/// The numeric value of a Kubernetes quantity (`1Gi`, `500m`, `1e3`, `2`), or None.
pub fn quantity_value(text: &str) -> Option<f64> {
    let text = text.trim();
    let split =
        text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extra_server_fields_do_not_count() {
        let desired = json!({"spec": {"replicas": 1, "template": {"containers": [{"name": "a"}]}}});
        let actual = json!({"spec": {"replicas": 1, "revisionHistoryLimit": 10,
            "template": {"containers": [{"name": "a", "terminationMessagePath": "/dev/termination-log"}]}},
            "status": {"replicas": 1}});
        assert!(is_subset(&desired, &actual));
    }

    #[test]
    fn changed_or_missing_fields_count() {
        let desired = json!({"spec": {"replicas": 1, "ports": [{"port": 8080}]}});
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 0, "ports": [{"port": 8080}]}})));
        assert!(!is_subset(&desired, &json!({"spec": {"ports": [{"port": 8080}]}})));
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 1, "ports": []}})));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 1, "ports": [{"port": 8080}, {"port": 1}]}})
        ));
    }

    #[test]
    fn quantities_compare_by_value() {
        assert!(is_subset(&json!({"cpu": "0.5"}), &json!({"cpu": "500m"})));
        assert!(is_subset(&json!({"memory": "1024Mi"}), &json!({"memory": "1Gi"})));
        assert!(is_subset(&json!({"cpu": 2}), &json!({"cpu": "2"})));
        assert!(!is_subset(&json!({"memory": "1Gi"}), &json!({"memory": "1G"})));
        assert!(!is_subset(&json!({"name": "abc"}), &json!({"name": "abd"})));
        assert_eq!(quantity_value("1e3"), Some(1000.0));
        assert_eq!(quantity_value("lots"), None);
    }
}

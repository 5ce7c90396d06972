//! The driver contract: every registered driver goes through the same suite, and each capability's
//! answer is asserted exactly.

mod support;

use std::time::Duration;

use keystone::drivers::{
    self, Driver, DriverKind, Facts, FirewallRule, HealthTarget, ImagePolicy, Peers, PortRef,
    SliceContext, SliceKey, SliceType, UpdateBehavior,
};
use keystone::model::AttachmentRole;

struct Expected {
    name: &'static str,
    kind: DriverKind,
    version_track: &'static str,
    image_policy: ImagePolicy,
    attachment_roles: &'static [AttachmentRole],
    default_ports: &'static [u16],
    volumes_of_x: &'static [(&'static str, &'static str)],
    env_required: &'static [&'static str],
    health_test: &'static [&'static str],
    stop_grace: u64,
    slice_types: &'static [SliceType],
    firewall: &'static [FirewallRule],
    update: UpdateBehavior,
    /// Does provisioning / configuring a slice of the example's service produce a script?
    provisions: bool,
    configures: bool,
    example_service: Option<&'static str>,
}

fn expectations() -> Vec<Expected> {
    vec![
        Expected {
            name: "laravel",
            kind: DriverKind::Application,
            version_track: "11",
            image_policy: ImagePolicy::Built,
            attachment_roles: &[],
            default_ports: &[],
            volumes_of_x: &[],
            env_required: &["APP_KEY"],
            health_test: &[
                "CMD-SHELL",
                "curl -fsS -o /dev/null http://127.0.0.1:8080/up || wget -q -O /dev/null http://127.0.0.1:8080/up",
            ],
            stop_grace: 30,
            slice_types: &[],
            firewall: &[FirewallRule {
                port: PortRef::ReplicaHostPorts,
                from: Peers::GatewayServers,
            }],
            update: UpdateBehavior::StatelessBlueGreen,
            provisions: false,
            configures: false,
            example_service: None,
        },
        Expected {
            name: "postgres18",
            kind: DriverKind::Shared,
            version_track: "18",
            image_policy: ImagePolicy::Upstream {
                default_image: "postgres:18",
            },
            attachment_roles: &[AttachmentRole::Database],
            default_ports: &[5432],
            volumes_of_x: &[("keystone_service_x_postgres_data", "/var/lib/postgresql")],
            env_required: &["POSTGRES_USER", "POSTGRES_PASSWORD"],
            health_test: &[
                "CMD-SHELL",
                "pg_isready -h 127.0.0.1 -p 8080 -U \"$POSTGRES_USER\" -d postgres",
            ],
            stop_grace: 60,
            slice_types: &[SliceType::Database],
            firewall: &[FirewallRule {
                port: PortRef::Service,
                from: Peers::AttachedServers,
            }],
            update: UpdateBehavior::StatefulStopStart,
            provisions: true,
            configures: false,
            example_service: Some("main-postgres"),
        },
        Expected {
            name: "valkey8",
            kind: DriverKind::Shared,
            version_track: "8",
            image_policy: ImagePolicy::Upstream {
                default_image: "valkey/valkey:8",
            },
            attachment_roles: &[
                AttachmentRole::Cache,
                AttachmentRole::Session,
                AttachmentRole::Queue,
            ],
            default_ports: &[6379],
            volumes_of_x: &[("keystone_service_x_valkey_data", "/data")],
            env_required: &[],
            health_test: &["CMD-SHELL", "valkey-cli -p 8080 ping | grep -q PONG"],
            stop_grace: 30,
            slice_types: &[SliceType::LogicalDatabase],
            firewall: &[FirewallRule {
                port: PortRef::Service,
                from: Peers::AttachedServers,
            }],
            update: UpdateBehavior::StatefulStopStart,
            provisions: true,
            configures: false,
            example_service: Some("main-valkey"),
        },
        Expected {
            name: "caddy2",
            kind: DriverKind::Shared,
            version_track: "2",
            image_policy: ImagePolicy::Upstream {
                default_image: "caddy:2",
            },
            attachment_roles: &[AttachmentRole::Gateway],
            default_ports: &[80],
            volumes_of_x: &[("keystone_service_x_caddy_data", "/data")],
            env_required: &[],
            health_test: &[
                "CMD",
                "wget",
                "-q",
                "-O",
                "/dev/null",
                "http://127.0.0.1:8080/config/",
            ],
            stop_grace: 30,
            slice_types: &[SliceType::Route],
            firewall: &[
                FirewallRule {
                    port: PortRef::Service,
                    from: Peers::Anywhere,
                },
                FirewallRule {
                    port: PortRef::Admin,
                    from: Peers::Localhost,
                },
            ],
            update: UpdateBehavior::StatefulStopStart,
            provisions: false,
            configures: true,
            example_service: Some("edge"),
        },
    ]
}

fn check(driver: &dyn Driver, e: &Expected) {
    let n = e.name;
    assert_eq!(driver.name(), e.name);
    assert_eq!(driver.kind(), e.kind, "{n} kind");
    assert_eq!(driver.version_track(), e.version_track, "{n} version_track");
    assert_eq!(driver.image_policy(), e.image_policy, "{n} image_policy");
    assert_eq!(
        driver.attachment_roles(),
        e.attachment_roles,
        "{n} attachment_roles"
    );
    assert_eq!(driver.default_ports(), e.default_ports, "{n} default_ports");
    let volumes: Vec<_> = driver
        .volumes("x")
        .iter()
        .map(|v| (v.name.clone(), v.target))
        .collect();
    let expected: Vec<_> = e
        .volumes_of_x
        .iter()
        .map(|(a, b)| (a.to_string(), *b))
        .collect();
    assert_eq!(volumes, expected, "{n} volumes");
    for v in driver.volumes("x") {
        assert_eq!(
            v.name,
            format!("keystone_service_x_{}", v.purpose),
            "{n} volume naming"
        );
    }
    let required: Vec<_> = driver
        .env_schema()
        .iter()
        .filter(|v| v.required)
        .map(|v| v.name)
        .collect();
    assert_eq!(required, e.env_required, "{n} env_schema");
    let health = driver.health_check(HealthTarget {
        port: 8080,
        path: "/up",
        http: true,
    });
    assert_eq!(health.test, e.health_test, "{n} health_check");
    assert!(
        health.interval >= Duration::from_secs(1) && health.retries >= 1,
        "{n} health timing"
    );
    assert_eq!(
        driver.resource_defaults().stop_grace_period,
        Duration::from_secs(e.stop_grace),
        "{n} resources"
    );
    assert_eq!(driver.slice_types(), e.slice_types, "{n} slice_types");
    assert_eq!(driver.firewall_rules(), e.firewall, "{n} firewall_rules");
    assert_eq!(driver.update_behavior(), e.update, "{n} update_behavior");
    assert!(
        driver.pre_switch_steps().is_empty(),
        "{n} pre_switch_steps: none in v1"
    );
    // A driver with slices has a slice type for each; one without has no attachment roles.
    assert_eq!(
        driver.slice_types().is_empty(),
        driver.attachment_roles().is_empty(),
        "{n} slices vs roles"
    );

    let model = support::example_model();
    let service_name = e.example_service.unwrap_or("main-postgres");
    let service = &model.services[service_name];
    let slice = SliceKey::new(service_name, "shop", "production");
    let mut facts = Facts::default();
    facts.valkey_indexes.insert(slice.clone(), 3);
    let admin = drivers::postgres18::admin_credentials(drivers::Sensitive::new("adminpw"));
    let ctx = SliceContext {
        model: &model,
        service,
        slice: &slice,
        facts: &facts,
        admin: Some(&admin),
    };
    assert_eq!(
        driver.provision_slice(&ctx).unwrap().is_some(),
        e.provisions,
        "{n} provision_slice"
    );
    assert_eq!(
        driver.configure_slice(&ctx).unwrap().is_some(),
        e.configures,
        "{n} configure_slice"
    );
}

#[test]
fn every_registered_driver_answers_the_whole_contract() {
    let expected = expectations();
    assert_eq!(
        drivers::names(),
        expected.iter().map(|e| e.name).collect::<Vec<_>>()
    );
    for e in &expected {
        let driver = drivers::get(e.name).unwrap_or_else(|| panic!("{} registered", e.name));
        check(driver, e);
    }
    assert!(drivers::get("mysql8").is_none());
}

#[test]
fn slice_scripts_name_the_stable_container_and_quote_everything() {
    let model = support::example_model();
    let slice = SliceKey::new("main-postgres", "shop", "production");
    let mut facts = Facts::default();
    facts
        .postgres_passwords
        .insert(slice.clone(), drivers::Sensitive::new("s3cr3t"));
    facts
        .valkey_indexes
        .insert(SliceKey::new("main-valkey", "shop", "production"), 3);
    let admin = drivers::postgres18::admin_credentials(drivers::Sensitive::new("adminpw"));

    let pg = drivers::get("postgres18").unwrap();
    let ctx = SliceContext {
        model: &model,
        service: &model.services["main-postgres"],
        slice: &slice,
        facts: &facts,
        admin: Some(&admin),
    };
    let script = pg.provision_slice(&ctx).unwrap().unwrap();
    assert_eq!(
        script.script,
        "set -eu\ndocker exec -i keystone-main-postgres psql -X -q -v ON_ERROR_STOP=1 -U keystone_admin -d postgres\n"
    );
    let sql = script.stdin.unwrap();
    assert!(
        sql.expose()
            .contains("ALTER ROLE \"shop_production\" WITH LOGIN PASSWORD 's3cr3t';")
    );
    assert!(
        !format!("{:?}", sql).contains("s3cr3t"),
        "Sensitive never debug-prints its value"
    );
    // Without the caller's facts the password is the executor's generated credential.
    let no_facts = Facts::default();
    let ctx = SliceContext {
        admin: None,
        facts: &no_facts,
        ..ctx
    };
    let sql = pg.provision_slice(&ctx).unwrap().unwrap().stdin.unwrap();
    assert!(sql.expose().contains(
        "ALTER ROLE \"shop_production\" WITH LOGIN PASSWORD '{{generated:main-postgres/shop/production}}';"
    ));

    let vk = drivers::get("valkey8").unwrap();
    let vslice = SliceKey::new("main-valkey", "shop", "production");
    let ctx = SliceContext {
        model: &model,
        service: &model.services["main-valkey"],
        slice: &vslice,
        facts: &facts,
        admin: None,
    };
    assert_eq!(
        vk.provision_slice(&ctx).unwrap().unwrap().script,
        "set -eu\ndocker exec keystone-main-valkey valkey-cli -p 6379 -n 3 ping | grep -q PONG\n"
    );

    let caddy = drivers::get("caddy2").unwrap();
    let gslice = SliceKey::new("edge", "shop", "production");
    let ctx = SliceContext {
        model: &model,
        service: &model.services["edge"],
        slice: &gslice,
        facts: &facts,
        admin: None,
    };
    assert_eq!(
        caddy.configure_slice(&ctx).unwrap().unwrap().script,
        "set -eu\ndocker exec keystone-edge caddy reload --config /etc/keystone/caddy.json --address 127.0.0.1:2019 --force\n"
    );
    assert_eq!(
        drivers::caddy2::set_upstreams_script(
            &model.services["edge"],
            "keystone_shop_production_web",
            &["10.77.0.12:20001".into(), "10.77.0.12:20000".into()]
        ),
        "set -eu\ncurl -fsS -X PATCH -H 'Content-Type: application/json' --data-binary '[{\"dial\":\"10.77.0.12:20001\"},{\"dial\":\"10.77.0.12:20000\"}]' http://127.0.0.1:2019/id/keystone_shop_production_web/upstreams\n"
    );
}

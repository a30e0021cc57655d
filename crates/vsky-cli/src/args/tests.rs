use super::*;
use clap::CommandFactory;
use clap::error::ErrorKind;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    let mut argv = vec!["vsky"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv)
}

#[test]
fn clap_definitions_are_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn parses_volume_create_with_all_options() {
    let cli = parse(&[
        "volume",
        "create",
        "v1",
        "--size",
        "10GiB",
        "--replicas",
        "3",
        "--stripe-width",
        "4",
        "--stripe-unit",
        "64KiB",
        "--class",
        "ssd",
        "--near",
        "n1",
    ])
    .unwrap();
    match cli.command {
        Command::Volume(VolumeCommand::Create {
            name,
            size,
            replicas,
            stripe_width,
            stripe_unit,
            class,
            near,
            thin,
        }) => {
            assert!(!thin);
            assert_eq!(name, "v1");
            assert_eq!(size, 10 << 30);
            assert_eq!(replicas, Some(3));
            assert_eq!(stripe_width, Some(4));
            assert_eq!(stripe_unit, Some(64 << 10));
            assert_eq!(class.as_deref(), Some("ssd"));
            assert_eq!(near.as_deref(), Some("n1"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn bad_size_is_a_value_error_naming_the_argument() {
    let err = parse(&["volume", "create", "v1", "--size", "10XB"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    let text = err.to_string();
    assert!(text.contains("--size"), "{text}");
    assert!(text.contains("unknown unit"), "{text}");

    let err = parse(&["disk", "add", "n1", "/dev/sdb", "--size", "lots"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    let err = parse(&["volume", "resize", "v1", "--size", "1.2.3G"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    let err = parse(&[
        "volume",
        "create",
        "v",
        "--size",
        "1G",
        "--stripe-width",
        "2",
        "--stripe-unit",
        "x",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("--stripe-unit"), "{err}");
}

#[test]
fn labels_need_an_equals_sign_and_a_key() {
    let cli = parse(&[
        "server",
        "add",
        "n1",
        "--address",
        "h:1",
        "--label",
        "rack=r1",
        "--label",
        "note=a=b",
        "--label",
        "empty=",
    ])
    .unwrap();
    match cli.command {
        Command::Server(ServerCommand::Add { labels, .. }) => assert_eq!(
            labels,
            vec![
                ("rack".into(), "r1".into()),
                ("note".into(), "a=b".into()),
                ("empty".into(), String::new())
            ]
        ),
        other => panic!("unexpected {other:?}"),
    }
    for bad in ["rack", "=r1", " =x"] {
        let err = parse(&["server", "add", "n1", "--address", "h:1", "--label", bad]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad}");
        assert!(err.to_string().contains("--label"), "{err}");
    }
}

#[test]
fn missing_required_arguments_are_usage_errors() {
    for args in [
        &["volume", "create", "v1"][..],
        &["server", "add", "n1"],
        &["disk", "add", "n1", "/dev/sdb"],
        &["disk", "add", "n1"],
        &["volume", "resize", "v1"],
        &["volume", "attach", "v1"],
    ] {
        let err = parse(args).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument, "{args:?}");
        assert_eq!(err.exit_code(), 2);
    }
    assert_eq!(
        parse(&[]).unwrap_err().kind(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
}

#[test]
fn stripe_options_go_together() {
    let err = parse(&[
        "volume",
        "create",
        "v",
        "--size",
        "1G",
        "--stripe-width",
        "2",
    ])
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    let err = parse(&[
        "volume",
        "create",
        "v",
        "--size",
        "1G",
        "--stripe-unit",
        "64K",
    ])
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
}

#[test]
fn non_numeric_ids_and_counts_are_refused() {
    assert_eq!(
        parse(&["disk", "show", "sdb"]).unwrap_err().kind(),
        ErrorKind::ValueValidation
    );
    assert_eq!(
        parse(&["disk", "remove", "-1"]).unwrap_err().kind(),
        ErrorKind::UnknownArgument
    );
    let err = parse(&["volume", "create", "v", "--size", "1G", "--replicas", "300"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
}

#[test]
fn attach_takes_the_server_positionally_or_as_a_flag_but_not_both() {
    for args in [
        &["volume", "attach", "v1", "n1"][..],
        &["volume", "attach", "v1", "--server", "n1"],
    ] {
        match parse(args).unwrap().command {
            Command::Volume(VolumeCommand::Attach {
                server_pos, server, ..
            }) => {
                assert_eq!(server_pos.or(server).as_deref(), Some("n1"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let err = parse(&["volume", "attach", "v1", "n1", "--server", "n2"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
}

#[test]
fn global_options_work_after_the_subcommand() {
    let cli = parse(&[
        "volume",
        "list",
        "--json",
        "--manager",
        "https://m:1",
        "--timeout",
        "500ms",
    ])
    .unwrap();
    assert!(cli.global.json);
    assert_eq!(cli.global.manager, "https://m:1");
    assert_eq!(cli.global.timeout, Duration::from_millis(500));
}

#[test]
fn drain_takes_stop_or_wait_but_not_both() {
    match parse(&["disk", "drain", "7"]).unwrap().command {
        Command::Disk(DiskCommand::Drain { id, stop, wait, .. }) => {
            assert_eq!((id, stop, wait), (7, false, false));
        }
        other => panic!("unexpected {other:?}"),
    }
    match parse(&["disk", "drain", "7", "--wait", "--wait-timeout", "5m"])
        .unwrap()
        .command
    {
        Command::Disk(DiskCommand::Drain {
            wait, wait_timeout, ..
        }) => {
            assert!(wait);
            assert_eq!(wait_timeout, Duration::from_secs(300));
        }
        other => panic!("unexpected {other:?}"),
    }
    match parse(&["server", "drain", "node3", "--stop"])
        .unwrap()
        .command
    {
        Command::Server(ServerCommand::Drain { name, stop, .. }) => {
            assert_eq!(name, "node3");
            assert!(stop);
        }
        other => panic!("unexpected {other:?}"),
    }
    for args in [
        &["disk", "drain", "7", "--stop", "--wait"][..],
        &["server", "drain", "n1", "--wait", "--stop"],
    ] {
        assert_eq!(
            parse(args).unwrap_err().kind(),
            ErrorKind::ArgumentConflict,
            "{args:?}"
        );
    }
    assert_eq!(
        parse(&["disk", "drain", "7", "--wait-timeout", "5m"])
            .unwrap_err()
            .kind(),
        ErrorKind::MissingRequiredArgument
    );
    assert_eq!(
        parse(&["disk", "drain", "sdb"]).unwrap_err().kind(),
        ErrorKind::ValueValidation
    );
    assert_eq!(
        parse(&["server", "drain"]).unwrap_err().kind(),
        ErrorKind::MissingRequiredArgument
    );
}

#[test]
fn rebalance_takes_a_move_count_and_wait() {
    match parse(&["pool", "rebalance"]).unwrap().command {
        Command::Pool(PoolCommand::Rebalance {
            max_moves, wait, ..
        }) => {
            assert_eq!(max_moves, None);
            assert!(!wait);
        }
        other => panic!("unexpected {other:?}"),
    }
    match parse(&["pool", "rebalance", "--max-moves", "500", "--wait"])
        .unwrap()
        .command
    {
        Command::Pool(PoolCommand::Rebalance {
            max_moves, wait, ..
        }) => {
            assert_eq!(max_moves, Some(500));
            assert!(wait);
        }
        other => panic!("unexpected {other:?}"),
    }
    // The bound (1-10000) is the manager's to enforce; only the shape
    // is checked here.
    for bad in ["-1", "many", "1.5"] {
        assert!(
            parse(&["pool", "rebalance", "--max-moves", bad]).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn there_is_no_token_flag() {
    let err = parse(&["--token", "secret", "volume", "list"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownArgument);
}

#[test]
fn timeouts_parse_with_units() {
    assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_timeout("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
    for bad in [
        "",
        "s",
        "0",
        "0ms",
        "5w",
        "-1s",
        "1.5s",
        "99999999999999999999m",
    ] {
        assert!(parse_timeout(bad).is_err(), "{bad:?}");
    }
}

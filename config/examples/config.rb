# Carina service configuration: the examples of the original user guide, ready for the embedded
# OpenNebula simulator (onesim). Upload the VM templates and the context scripts (context/*.sh:
# init.sh, carina-lib.sh, network.sh and the application scripts) first, then this file:
#   oneenv --upload config/examples/*.vm context/*.sh
#   oneenv --upload config/examples/config.rb
# This file is parsed (never executed): only Ruby literals are allowed (strings, symbols, numbers,
# true/false/nil, arrays, hashes with `=>` or `key:` pairs, comments, trailing commas).

ENDPOINT = {
  'onesim' => {
    :proxy   => 'http://127.0.0.1:2633/RPC2',
    :oneauth => 'oneadmin:onesim',
  },
}

TEMPLATE = {
  'example' => {
    :file       => '/home/oneenv1/vm/example.vm',   # only the file name counts: upload example.vm
    :cpu        => 1,
    :memory     => 512,
    :network_id => { 'onesim' => 0 },
    :image_id   => { 'onesim' => 0 },
  },
  'cassandra' => {
    :file       => '/home/oneenv1/vm/cassandra.vm',
    :cpu        => 1,
    :memory     => 512,
    :network_id => { 'onesim' => 0 },
    :image_id   => { 'onesim' => 0 },
  },
}

ENVIRONMENT = {
  # A load-balanced Tomcat cluster: the master runs the balancer, each slave a Tomcat.
  'tomcat' => {
    :type                  => "compute",
    :endpoint              => "onesim",
    :description           => "Load-balanced Tomcat cluster",
    :placement_policy      => "pack",
    :master_template       => "example",
    :master_context_script => "tomcat-master.sh",
    :master_setup_time     => 0,        # the guide used 30 (seconds before the slaves are created)
    :master_context_var    => "BALANCE_PORT=8080",
    :slave_template        => "example",
    :slave_context_script  => "tomcat-slave.sh",
    :slave_context_var     => "\"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%\"",
    :num_slaves            => 2,
    :slavedata             => "8080",
    :adminuser             => "root",
    :app_url               => "http://%MASTER%:8080/gwt-petstore",
    :drain_time            => 0,        # seconds between `remove` on the master and deleting the slave
  },

  # The same cluster with load-based elasticity (guide: "Load-Based Elasticity").
  'e-tomcat' => {
    :type                  => "compute",
    :endpoint              => "onesim",
    :description           => "Load-balanced Tomcat cluster",
    :placement_policy      => "pack",
    :master_template       => "example",
    :master_context_script => "tomcat-master.sh",
    :master_setup_time     => 0,
    :master_context_var    => "BALANCE_PORT=8080",
    :slave_template        => "example",
    :slave_context_script  => "tomcat-slave.sh",
    :slave_context_var     => "\"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%\"",
    :num_slaves            => 1,
    :slavedata             => "8080",
    :adminuser             => "root",
    :app_url               => "http://%MASTER%:8080/gwt-petstore",
    :drain_time            => 0,
    :elasticity_policy     => {
      :mode           => 'auto',
      :min            => 2,
      :max            => 4,
      :priority       => 10,
      :period         => 3,             # 3 consecutive true evaluations (one per minute)
      :scaleup_expr   => 'avgcpu > 50',
      :scaledown_expr => 'avgcpu < 20',
    },
  },

  # Cassandra with NFS mounts handed out through MOUNTLIST (guide: "Application Storage").
  # The doubled backslashes survive the shell quoting of the context variables.
  'cassandra' => {
    :type                  => "data",
    :endpoint              => "onesim",
    :description           => "Cassandra NoSQL Database",
    :master_template       => "cassandra",
    :master_context_script => "cassandra.sh",
    :master_context_var    => "\"MOUNTLIST=\\/vol\\/data{1-6},\"",
    :slave_template        => "cassandra",
    :slave_context_script  => "cassandra.sh",
    :slave_context_var     => "\"SLAVE_ID=%SLAVE_INDEX%, NUM_SLAVES=%NUM_SLAVES%, SEEDS=%MASTER%, MOUNTLIST=\\/vol\\/data{1-6},\"",
    :num_slaves            => 2,
    :adminuser             => "root",
  },

  # Members of the 'analytics' group: names made of letters, digits and _ only (they become
  # context variables such as HBASE_URL).
  'hbase' => {
    :type                  => "data",
    :endpoint              => "onesim",
    :description           => "HBase data store",
    :master_template       => "example",
    :master_context_script => "tomcat-master.sh",
    :slave_template        => "example",
    :slave_context_script  => "tomcat-slave.sh",
    :num_slaves            => 1,
    :slavedata             => "8080",
    :app_url               => "http://%MASTER%:8080/hbase",
    :drain_time            => 0,
  },
  'jenkins' => {
    :type                  => "compute",
    :endpoint              => "onesim",
    :description           => "Jenkins build environment",
    :master_template       => "example",
    :master_context_script => "tomcat-master.sh",
    :slave_template        => "example",
    :slave_context_script  => "tomcat-slave.sh",
    :num_slaves            => 0,
    :app_url               => "http://%MASTER%:8080/jenkins",
    :drain_time            => 0,
  },

  # An environment group (guide: "Environment Groups"). Members are created in this order; each
  # dependency's app URL reaches its dependants as <NAME>_URL. The guide listed an 'apache'
  # member that it never defined and a 'jenkins' dependency that was not a member: fixed here.
  'analytics' => {
    :type         => "group",
    :description  => "BI Analytics environment with Hbase data store and Tomcat cluster for processing and a Jenkins build environment",
    :members      => [ 'hbase', 'jenkins', 'tomcat' ],
    :dependencies => { 'tomcat'  => ['hbase', 'jenkins'],
                       'jenkins' => ['hbase'] },
  },

  # An active/passive pair (guide: "Availability Policies"). `numfail` is accepted as numfailed.
  'tomcat_ha_active' => {
    :type                  => "compute",
    :endpoint              => "onesim",
    :description           => "Load-balanced Tomcat cluster",
    :placement_policy      => "pack",
    :master_template       => "example",
    :master_context_script => "tomcat-master.sh",
    :master_context_var    => "BALANCE_PORT=8080",
    :slave_template        => "example",
    :slave_context_script  => "tomcat-slave.sh",
    :num_slaves            => 2,
    :slavedata             => "8080",
    :app_url               => "http://%MASTER%:8080/gwt-petstore",
    :drain_time            => 0,
    :availability_policy   => {
      :period         => 3,
      :recreate_expr  => "nummissing > 0 || numunknown > 0 || numfailed > 0",
      :failover_role  => "active",
      :failover_group => "tomcat-ha",
      :failover_expr  => "(numunknown + nummissing + numfail)/numvms > 0.50",
      :failback_expr  => "numunknown == 0",
    },
  },
  'tomcat_ha_passive' => {
    :type                  => "compute",
    :endpoint              => "onesim",
    :description           => "Load-balanced Tomcat cluster",
    :placement_policy      => "pack",
    :master_template       => "example",
    :master_context_script => "tomcat-master.sh",
    :master_context_var    => "BALANCE_PORT=8080",
    :slave_template        => "example",
    :slave_context_script  => "tomcat-slave.sh",
    :num_slaves            => 0,        # only the balancer until a failover makes it ACTIVE
    :slavedata             => "8080",
    :app_url               => "http://%MASTER%:8080/gwt-petstore",
    :drain_time            => 0,
    :availability_policy   => {
      :period         => 3,
      :failover_role  => "passive",
      :failover_group => "tomcat-ha",
    },
    :elasticity_policy     => {
      :mode    => 'time-based',
      :windows => {
        'all' => { :spec => 'Mon-Fri 0000-2359', :min => 4 },
      },
    },
  },
}
